"""Two runs compared cell by cell: what changed beyond the noise (pyperf's compare_to, for
this lab's cells).

    python -m bench compare results/BASE results/NEW [--min-change 5%] [--fail-on-regression]

Cells are matched by (column, route, latency); the runs may have different repeats. Each
side's steady sRPS is the report's own estimate (`stats.steady_estimate`): the mean over
the repeats with their Student t interval where a side has several, else the cell's
batch-means interval. The test is Welch's t-test on the difference of the two means: each
side's standard error is the one its interval implies (half-width over its t quantile,
`Estimate.se`), with that interval's degrees of freedom (n - 1 repeats, or k - 1 batch
means); the degrees of freedom of the difference are Welch-Satterthwaite's. Welch, not a
pooled t-test: the two sides' variances and degrees of freedom differ (a 7-batch cell
against a 56-batch one, 3 repeats against 1). The ratio's interval is the difference's
95% interval over BASE's mean, plus one, so it excludes 1 exactly when the test says
"significant".

Like pyperf's compare_to, nothing corrects for testing many cells: at 95%, about one
matched cell in twenty is "significant" by chance when nothing changed. And with one
repeat per side the interval is within the cell only: it does not see what moves from one
run to the next (another engineer's load, PostgreSQL's cache), so prefer `--repeats 3`
for runs meant to be compared.

The three-way interaction and the study's verdicts are the report's (`interaction.py`,
`study.py`), computed on each run and set side by side.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

from scipy import stats

from bench.machine import cpu_work_text
from bench.report import ReportError
from bench.report.content import what_ran
from bench.report.data import Run
from bench.report.interaction import interactions
from bench.report.stats import CONFIDENCE, Estimate, Interaction, mean_metric, ok_cells, ratio
from bench.report.study import Comparison as StudyComparison
from bench.report.study import Verdict
from bench.report.tables import Estimates, run_estimates

ALPHA = 1 - CONFIDENCE
FASTER = "faster"
SLOWER = "slower"
NOT_SIGNIFICANT = "not significant"
NO_TEST = "no test"
WELCH_METHOD = (
    "Welch's t-test (two-sided, 95%) on the difference of steady sRPS, NEW - BASE. Each "
    "side's standard error is the one its 95% interval implies (half-width over the t "
    "quantile of its degrees of freedom): across repeats where a side has several (n - 1 "
    "degrees of freedom), else the cell's own batch-means interval (k - 1, k batch means); "
    "Welch-Satterthwaite degrees of freedom. ratio = NEW / BASE; its interval is 1 + the "
    "difference's 95% interval / BASE's mean, so it excludes 1 exactly when the test is "
    "significant. faster/slower: significant and changed by more than --min-change. No "
    "correction for testing many cells: about 1 in 20 is significant by chance when "
    "nothing changed. With one repeat per side the interval is within the cell and does "
    "not see what varies between runs: compare runs with --repeats 3 to trust a verdict.")

Key = tuple[str, str, int]  # (column, route, latency ms)


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of NEW - BASE."""

    difference: float
    se: float
    df: float
    p_value: float
    low: float  # the difference's 95% interval
    high: float


def welch_test(base: Estimate, new: Estimate) -> Welch | None:
    """Welch's t-test on two estimates' means, from their standard errors and degrees of
    freedom; None when either side has no interval."""
    se_base, se_new = base.se, new.se
    if se_base is None or se_new is None or not base.df or not new.df:
        return None
    difference = new.mean - base.mean
    variance = se_base ** 2 + se_new ** 2
    if variance == 0:  # two zero-width intervals: equal or certainly different
        p_value = 1.0 if difference == 0 else 0.0
        return Welch(difference, 0.0, float(base.df + new.df), p_value, difference,
                     difference)
    # scipy's t, not steady.t_quantile: Welch's degrees of freedom are not whole.
    df = variance ** 2 / (se_base ** 4 / base.df + se_new ** 4 / new.df)
    se = math.sqrt(variance)
    p_value = float(2 * stats.t.sf(abs(difference) / se, df))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, df)) * se
    return Welch(difference, se, df, p_value, difference - half, difference + half)


@dataclass(frozen=True)
class CellChange:
    """One matched (column, route, latency): both sides, the test and its verdict."""

    column: str
    route: str
    latency_ms: int
    base: Estimate | None
    new: Estimate | None
    base_p99_ms: float | None
    new_p99_ms: float | None
    test: Welch | None
    verdict: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.new is None:
            return None
        return ratio(self.new.mean, self.base.mean)

    @property
    def ratio_ci(self) -> tuple[float, float] | None:
        if self.test is None or self.base is None or self.base.mean <= 0:
            return None
        return 1 + self.test.low / self.base.mean, 1 + self.test.high / self.base.mean

    @property
    def label(self) -> str:
        return f"{self.column} {self.route}/ {self.latency_ms} ms"


def verdict(base: Estimate, test: Welch | None, min_change: float) -> tuple[str, str]:
    """(verdict, note): faster or slower when the test is significant and the change is
    more than `min_change` of BASE's mean."""
    if test is None:
        return NO_TEST, "no interval on one side"
    if test.p_value >= ALPHA:
        return NOT_SIGNIFICANT, ""
    if base.mean > 0 and abs(test.difference) / base.mean <= min_change:
        return NOT_SIGNIFICANT, f"significant, but within --min-change {min_change:.0%}"
    return (FASTER if test.difference > 0 else SLOWER), ""


def _side_state(run: Run, key: Key, estimate: Estimate | None) -> str:
    """Why one side of a matched cell has no test: failed, missing, no steady sRPS..."""
    cells = run.group(*key)
    if not ok_cells(cells):
        states = sorted({c.status for c in cells})
        return "/".join(states) or "missing"
    if estimate is None:
        return "no steady sRPS"
    return "no interval"


def cell_change(base: Run, new: Run, base_estimates: Estimates, new_estimates: Estimates,
                key: Key, min_change: float) -> CellChange:
    b, n = base_estimates.get(key), new_estimates.get(key)
    p99 = (mean_metric(base.group(*key), "p99_ms"), mean_metric(new.group(*key), "p99_ms"))
    if b is None or n is None:
        return CellChange(*key, b, n, *p99, None, NO_TEST, _why_no_test(base, new, key, b, n))
    test = welch_test(b, n)
    found, note = verdict(b, test, min_change)
    if test is None:
        note = _why_no_test(base, new, key, b, n)
    return CellChange(*key, b, n, *p99, test, found, note)


def _why_no_test(base: Run, new: Run, key: Key, b: Estimate | None, n: Estimate | None
                 ) -> str:
    states = {name: _side_state(run, key, e) for name, run, e in
              (("BASE", base, b), ("NEW", new, n)) if e is None or e.se is None}
    if len(states) == 2 and len(set(states.values())) == 1:
        return f"both: {states['BASE']}"
    return "; ".join(f"{name}: {state}" for name, state in states.items())


# -- the runs' context --------------------------------------------------------------------

@dataclass(frozen=True)
class MetaRow:
    """One line of the runs' metadata, side by side."""

    key: str
    base: str
    new: str

    @property
    def differs(self) -> bool:
        return self.base != self.new


def _profile(info: dict[str, Any]) -> dict[str, Any]:
    """The run's profile without its description (format 1 runs name it in config only)."""
    profile = info.get("profile")
    if not isinstance(profile, dict):
        return {"name": (info.get("config") or {}).get("profile", "?")}
    return {k: v for k, v in profile.items() if k != "description"}


def _profile_text(profile: dict[str, Any]) -> str:
    fields = ", ".join(f"{k} {v}" for k, v in profile.items() if k != "name")
    return f"{profile.get('name', '?')} ({fields})"


def _calibration_text(calibration: Any) -> str:
    if not isinstance(calibration, dict) or not calibration.get("samples_ms"):
        return "not recorded"
    return (f"median {calibration.get('median_ms', 0):.1f} ms, cv "
            f"{100 * calibration.get('cv', 0):.1f}% ({len(calibration['samples_ms'])} samples "
            f"of a {calibration.get('loop', '?')} loop)")


def cell_probes(run: Run) -> list[float]:
    """The machine's speed during each measured cell (metrics machine_probe_ms: the CPU
    probe's mean over the cell's window, ms per 50,000 turns), of the cells that have one."""
    return [v for c in run.cells if (v := c.metric("machine_probe_ms")) is not None and v > 0]


def _probe_text(probes: list[float]) -> str:
    if not probes:
        return "not recorded"
    spread = (f", cv {100 * statistics.stdev(probes) / statistics.fmean(probes):.1f}%"
              if len(probes) > 1 else "")
    return (f"median {statistics.median(probes):.3f} ms a 50,000-turn probe{spread} "
            f"({len(probes)} cells)")


def _machine_text(machine: Any) -> str:
    machine = machine if isinstance(machine, dict) else {}
    return (f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', '?')}, "
            f"{machine.get('memory_gib', '?')} GiB")


def metadata_rows(base: Run, new: Run) -> list[MetaRow]:
    """The report's "What ran" of both runs, line by line, with the packages one a line,
    the profile without its prose, and what the report does not list: the machine's
    speed (its calibration at the start and its probes during the cells), the cpu/ work and
    the mode."""
    lines = [dict(what_ran(base)), dict(what_ran(new))]
    extra = [{"machine speed at start": _calibration_text(run.info.get("machine_calibration")),
              "machine speed in cells": _probe_text(cell_probes(run)),
              "mode": str(run.info.get("mode", "local")),
              "profile": _profile_text(_profile(run.info))} for run in (base, new)]
    rows = []
    for key in [*lines[0], *(k for k in lines[1] if k not in lines[0])]:
        if key == "packages":
            packages = [run.info.get("packages") or {} for run in (base, new)]
            rows += [MetaRow(name, str(packages[0].get(name, "not installed")),
                             str(packages[1].get(name, "not installed")))
                     for name in sorted(set(packages[0]) | set(packages[1]))]
            continue
        values = [extra[i].get(key, lines[i].get(key, "n/a")) for i in (0, 1)]
        rows.append(MetaRow(key, values[0], values[1]))
        if key == "machine":
            rows += [MetaRow(k, extra[0][k], extra[1][k]) for k in (
                "machine speed at start", "machine speed in cells", "mode")]
    return rows


def _welch(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p-value; 1 or 0 for two sets without spread."""
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 1.0 if statistics.median(a) == statistics.median(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def machine_speed_warning(base: Run, new: Run) -> str | None:
    """A warning when the machine ran at another speed in NEW than in BASE beyond its noise
    (Welch's t-test, 95%).

    Compared on the cells' own probes where both runs have at least two: the speed while
    the cells were measured, each cell one sample, spread over the whole run. The start
    calibration (7 loops in under a second) is the fallback only: these machines switch
    between a fast and a slow state for seconds to minutes at a time, and the start
    catches one of them. Over 8 runs on one machine (2026-11-27/28) it read 54.4-93.3 ms
    while the medians of the cells' probes stayed within 4.02-4.27 ms; two default runs
    at 54.4 and 93.3 ms had cells' probes of 4.151 and 4.133 ms.
    """
    probes = [cell_probes(base), cell_probes(new)]
    if all(len(p) >= 2 for p in probes):
        a, b = probes
        p_value = _welch(a, b)
        if p_value >= ALPHA:
            return None
        median_a, median_b = statistics.median(a), statistics.median(b)
        return (f"machine speed differs: its CPU probe read {median_a:.3f} ms (median over "
                f"the cells) in BASE and {median_b:.3f} ms in NEW "
                f"({median_b / median_a - 1:+.1%}; Welch's t-test on the {len(a)} + {len(b)} "
                f"cells, p = {p_value:.2g}): a change in CPU-bound cells may be the machine's")
    samples = [(run.info.get("machine_calibration") or {}).get("samples_ms") or []
               for run in (base, new)]
    missing = [name for name, s in zip(("BASE", "NEW"), samples, strict=True) if len(s) < 2]
    if missing:
        return (f"machine speed cannot be compared: {' and '.join(missing)} recorded no "
                f"machine_calibration, nor a CPU probe in {'its' if len(missing) == 1 else 'their'}"
                " cells")
    a, b = ([float(v) for v in s] for s in samples)
    p_value = _welch(a, b)
    if p_value >= ALPHA:
        return None
    median_a, median_b = statistics.median(a), statistics.median(b)
    change = median_b / median_a - 1
    return (f"machine speed differs: the calibration loop took {median_a:.1f} ms (median) in "
            f"BASE and {median_b:.1f} ms in NEW ({change:+.1%}; Welch's t-test on the "
            f"{len(a)} + {len(b)} samples, p = {p_value:.2g}), beyond the calibration's "
            "noise (the cells of one run or both have no CPU probe, and the calibration is "
            "one moment before the first cell): a change in CPU-bound cells may be the "
            "machine's")


def warnings_of(base_run: Run, new_run: Run) -> list[str]:
    """Differences between the runs that break the comparison of their numbers."""
    base, new = base_run.info, new_run.info
    found = []
    backends = (base.get("latency_backend"), new.get("latency_backend"))
    if backends[0] != backends[1]:
        found.append(f"latency backend differs: BASE {backends[0]}, NEW {backends[1]}; the "
                     "proxy delays chunks in a process and charges the TCP handshake to "
                     "the first message, netem delays packets in the kernel, so latency "
                     "cells measure slightly different things")
    profiles = [_profile(base), _profile(new)]
    if profiles[0] != profiles[1]:
        found.append(f"profile differs: BASE {_profile_text(profiles[0])}, NEW "
                     f"{_profile_text(profiles[1])}; users and hold lengths shape sRPS")
    machines = [_machine_text(info.get("machine")) for info in (base, new)]
    if machines[0] != machines[1]:
        found.append(f"different machine: BASE {machines[0]}, NEW {machines[1]}")
    speed = machine_speed_warning(base_run, new_run)
    if speed:
        found.append(speed)
    works = [{k: v for k, v in (info.get("cpu_work") or {}).items() if k in ("ms", "loop")}
             for info in (base, new)]
    if works[0] != works[1]:
        found.append(f"cpu/ does different work: {cpu_work_text(works[0])} in BASE, "
                     f"{cpu_work_text(works[1])} in NEW (a loop sized at the start of a run "
                     "costs what the machine's speed makes of it)")
    return found


# -- the report's conclusions, side by side -------------------------------------------------

@dataclass(frozen=True)
class InteractionChange:
    io_route: str
    base: Interaction | None
    new: Interaction | None
    difference: float | None  # NEW - BASE
    ci: tuple[float, float] | None
    note: str = ""

    @property
    def changed(self) -> bool | None:
        if self.ci is None:
            return None
        return self.ci[0] > 0 or self.ci[1] < 0


def _interaction_se(found: Interaction) -> float | None:
    """The standard error behind the interaction's normal interval."""
    if found.ci is None:
        return None
    return (found.ci[1] - found.ci[0]) / (2 * float(stats.norm.ppf((1 + CONFIDENCE) / 2)))


def interaction_changes(base: Run, new: Run, base_estimates: Estimates,
                        new_estimates: Estimates) -> tuple[list[InteractionChange], list[str]]:
    """The report's interaction of each run per I/O route, and NEW - BASE with a normal
    interval from the two delta-method standard errors (the runs are independent)."""
    (found_base, skipped_base), (found_new, skipped_new) = (
        interactions(base, base_estimates), interactions(new, new_estimates))
    by_route_base = {f.io_route: f for f in found_base}
    by_route_new = {f.io_route: f for f in found_new}
    changes = []
    for route in [*by_route_base, *(r for r in by_route_new if r not in by_route_base)]:
        b, n = by_route_base.get(route), by_route_new.get(route)
        if b is None or n is None:
            changes.append(InteractionChange(route, b, n, None, None,
                                             f"not estimated in {'BASE' if b is None else 'NEW'}"))
            continue
        note = ""
        if (b.sync_column, b.async_column, b.low_ms, b.high_ms) != (
                n.sync_column, n.async_column, n.low_ms, n.high_ms):
            note = (f"different cells: BASE {b.sync_column} vs {b.async_column} at "
                    f"{b.low_ms}-{b.high_ms} ms, NEW {n.sync_column} vs {n.async_column} at "
                    f"{n.low_ms}-{n.high_ms} ms")
        difference = n.value - b.value
        se_b, se_n = _interaction_se(b), _interaction_se(n)
        ci = None
        if se_b is not None and se_n is not None:
            half = float(stats.norm.ppf((1 + CONFIDENCE) / 2)) * math.hypot(se_b, se_n)
            ci = (difference - half, difference + half)
        changes.append(InteractionChange(route, b, n, difference, ci, note))
    notes = [f"BASE: {s}" for s in skipped_base] + [f"NEW: {s}" for s in skipped_new]
    return changes, notes


@dataclass(frozen=True)
class VerdictChange:
    number: int
    short: str
    base_held: str
    new_held: str
    changed_checks: list[str]


def verdict_changes(base: Run, new: Run) -> list[VerdictChange]:
    """The study's conclusions as each run's report states them, and the checks whose
    answer moved."""
    answer = {True: "agrees", False: "disagrees", None: "cannot tell"}
    pairs: list[tuple[Verdict, Verdict]] = list(zip(
        StudyComparison(base).verdicts(), StudyComparison(new).verdicts(), strict=True))
    out = []
    for b, n in pairs:
        new_checks = {c.what: c for c in n.checks}
        moved = [f"{c.what}: {answer[c.agrees]} in BASE, {answer[new_checks[c.what].agrees]} "
                 f"in NEW" for c in b.checks
                 if c.what in new_checks and new_checks[c.what].agrees != c.agrees]
        out.append(VerdictChange(b.number, b.short, b.held, n.held, moved))
    return out


# -- the comparison -------------------------------------------------------------------------

@dataclass
class RunComparison:
    base: Run
    new: Run
    min_change: float
    cells: list[CellChange]
    base_only_columns: list[str]
    new_only_columns: list[str]
    base_only_cells: list[str]  # cells of shared columns the other run did not plan
    new_only_cells: list[str]
    metadata: list[MetaRow]
    warnings: list[str]
    interactions: list[InteractionChange]
    interaction_notes: list[str]
    verdicts: list[VerdictChange]

    @property
    def regressions(self) -> list[CellChange]:
        return [c for c in self.cells if c.verdict == SLOWER]

    def count(self, found: str) -> int:
        return sum(c.verdict == found for c in self.cells)


def _keys(run: Run) -> list[Key]:
    columns = {c.name: i for i, c in enumerate(run.columns)}
    routes = {r: i for i, r in enumerate(run.routes)}
    keys = {(c.column, c.route, c.latency_ms) for c in run.cells}
    return sorted(keys, key=lambda k: (columns[k[0]], routes[k[1]], k[2]))


def _label(key: Key) -> str:
    return f"{key[0]} {key[1]}/ {key[2]} ms"


def pair_columns(base: Run, new: Run, pairs: list[tuple[str, str]]) -> tuple[Run, list[str]]:
    """NEW with each paired column renamed to its BASE column, so that two configurations
    (e.g. `async_pooled` and `async_pooled+pool5`) are compared cell by cell; and one line
    per pair saying so. ReportError for a column that is not in its run."""
    renames: dict[str, str] = {}
    notes = []
    base_columns = [c.name for c in base.columns]
    new_columns = [c.name for c in new.columns]
    for base_column, new_column in pairs:
        if base_column not in base_columns:
            raise ReportError(f"--pair: BASE {base.folder} has no column {base_column!r} "
                              f"(it has {', '.join(base_columns) or 'none'})")
        if new_column not in new_columns:
            raise ReportError(f"--pair: NEW {new.folder} has no column {new_column!r} "
                              f"(it has {', '.join(new_columns) or 'none'})")
        if new_column in renames:
            raise ReportError(f"--pair: NEW's column {new_column!r} is paired twice")
        renames[new_column] = base_column
        notes.append(f"paired (--pair): NEW's {new_column} is compared with BASE's "
                     f"{base_column}; rows name BASE's column")
    if not renames:
        return new, notes
    # A paired name may still be one of NEW's own columns: it is replaced, not merged.
    kept = [c for c in new.cells if c.column not in set(renames.values()) - set(renames)]
    cells = [replace(c, column=renames.get(c.column, c.column)) for c in kept]
    return replace(new, cells=cells), notes


def compare_runs(base: Run, new: Run, min_change: float = 0.0,
                 pairs: list[tuple[str, str]] | None = None) -> RunComparison:
    """BASE and NEW matched by (column, route, latency), after `pairs` (BASE column, NEW
    column) have been renamed in NEW; ReportError when nothing matches."""
    new, pair_notes = pair_columns(base, new, pairs or [])
    base_keys, new_keys = _keys(base), _keys(new)
    base_columns = [c.name for c in base.columns]
    new_columns = [c.name for c in new.columns]
    shared = set(base_columns) & set(new_columns)
    matched = [k for k in base_keys if k in set(new_keys)]
    if not matched:
        raise ReportError(
            f"{base.folder} and {new.folder} have no cell in common (column, route, "
            f"latency): BASE has {', '.join(base_columns) or 'no cells'}; NEW has "
            f"{', '.join(new_columns) or 'no cells'}")
    base_estimates, new_estimates = run_estimates(base), run_estimates(new)
    cells = [cell_change(base, new, base_estimates, new_estimates, k, min_change)
             for k in matched]
    changes, interaction_notes = interaction_changes(base, new, base_estimates, new_estimates)
    return RunComparison(
        base, new, min_change, cells,
        base_only_columns=[c for c in base_columns if c not in shared],
        new_only_columns=[c for c in new_columns if c not in shared],
        base_only_cells=[_label(k) for k in base_keys if k[0] in shared and k not in matched],
        new_only_cells=[_label(k) for k in new_keys if k[0] in shared and k not in
                        set(base_keys)],
        metadata=metadata_rows(base, new),
        warnings=[*pair_notes, *warnings_of(base, new)],
        interactions=changes, interaction_notes=interaction_notes,
        verdicts=verdict_changes(base, new))
