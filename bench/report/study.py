"""The 2022 study: its numbers (Tables 1-3), its conclusions, and whether a run agrees.

The numbers are a copy of the study's study_results.csv kept in this package, so the
report needs nothing outside it. Hardware differs, so a run is compared by ratios, never by
absolute numbers; columns map to the study's setups by their `study_label`.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.report.data import Run
from bench.report.stats import mean_metric, ratio, steady_estimate

# The study's Tables 1-3 (route,latency_ms,setup,max_srps,total_successes), a copy of the
# study's study_results.csv kept beside this module.
STUDY_RESULTS_CSV = (Path(__file__).parent / "study_results.csv").read_text(encoding="utf-8")

SETUPS = ("Sync", "Async Limited", "Async Unlimited")
STUDY_LATENCIES = (0, 100, 200)
ROUTE_TITLES = {"cpu": "cpu/", "io_read": "io_read/", "io_create": "io_create/"}
TABLE_NUMBERS = {"cpu": 1, "io_read": 2, "io_create": 3}

CONCLUSIONS = {
    1: "CPU-bound: Sync is steadier and has more total successes; async setups behave "
       "erratically.",
    2: "I/O-bound: async beats sync even at 0 ms; with 100-200 ms, sync collapses (about 1 "
       "request/s) while async keeps its throughput, Async Unlimited best.",
    3: "Async Limited failed with \"FATAL: sorry, too many clients already\": the server "
       "opened more PostgreSQL connections than max_connections allowed.",
}
SHORT_NAMES = {1: "CPU-bound: sync more successes", 2: "I/O-bound: async keeps its throughput",
               3: "Async Limited: too many clients"}
TOO_MANY_CLIENTS = re.compile(r"too[ _-]?many[ _-]?clients", re.IGNORECASE)
COLLAPSE_BELOW = 0.5  # "collapses": keeps less than half its 0 ms throughput
KEEPS_FROM = 0.5


def study_results() -> dict[tuple[str, int, str], tuple[float, int]]:
    """(route, latency_ms, setup) -> (max sRPS, total successes)."""
    rows = csv.DictReader(io.StringIO(STUDY_RESULTS_CSV))
    return {(r["route"], int(r["latency_ms"]), r["setup"]): (float(r["max_srps"]),
                                                              int(r["total_successes"]))
            for r in rows}


@dataclass
class Check:
    """One ratio of one conclusion: the study's value, this run's, and whether they agree."""

    conclusion: int
    what: str
    expected: str
    study_metric: str
    study: str
    run_study_metric: str
    run_steady: str
    agrees: bool | None
    note: str = ""


@dataclass
class Verdict:
    number: int
    statement: str
    held: str  # holds | does not hold | partly | cannot tell
    checks: list[Check] = field(default_factory=list)
    note: str = ""

    @property
    def short(self) -> str:
        return SHORT_NAMES[self.number]


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) < 0.1:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _study_latency(latency_ms: int) -> int:
    if latency_ms in STUDY_LATENCIES:
        return latency_ms
    return min(STUDY_LATENCIES[1:], key=lambda s: abs(s - latency_ms))


class Comparison:
    """Ratios of this run next to the study's, by study label."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.study = study_results()
        self.by_label: dict[str, str] = {}
        for column in run.columns:
            if column.study_label in SETUPS and column.study_label not in self.by_label:
                self.by_label[column.study_label] = column.name

    def _study_value(self, label: str, route: str, latency_ms: int, metric: str) -> float | None:
        found = self.study.get((route, latency_ms, label))
        if found is None:
            return None
        return found[0] if metric == "max sRPS" else float(found[1])

    def _run_value(self, label: str, route: str, latency_ms: int, metric: str) -> float | None:
        column = self.by_label.get(label)
        if column is None:
            return None
        cells = self.run.group(column, route, latency_ms)
        if metric == "steady sRPS":
            estimate = steady_estimate(cells)
            return None if estimate is None else estimate.mean
        return mean_metric(cells, "max_srps" if metric == "max sRPS" else "total_successes")

    def ratio_check(self, conclusion: int, route: str, top: tuple[str, int],
                    bottom: tuple[str, int], metric: str, expect_above: float,
                    higher: bool) -> Check:
        """A ratio top/bottom, expected above (higher) or below `expect_above`."""
        (top_label, top_ms), (bottom_label, bottom_ms) = top, bottom
        what = (f"{ROUTE_TITLES.get(route, route)} {top_label} at {top_ms} ms ÷ "
                f"{bottom_label} at {bottom_ms} ms")
        expected = f"{'>' if higher else '<'} {expect_above:g}"
        study_top, study_bottom = _study_latency(top_ms), _study_latency(bottom_ms)
        note = ""
        if (study_top, study_bottom) != (top_ms, bottom_ms):
            note = f"study at {study_top} ms / {study_bottom} ms"
        missing = [label for label in {top_label, bottom_label} if label not in self.by_label]
        study = ratio(self._study_value(top_label, route, study_top, metric),
                      self._study_value(bottom_label, route, study_bottom, metric))
        if missing:
            return Check(conclusion, what, expected, metric, _fmt(study), "n/a", "n/a", None,
                         f"cannot compare: no column labelled {' or '.join(sorted(missing))}")
        run_metric = ratio(self._run_value(top_label, route, top_ms, metric),
                           self._run_value(bottom_label, route, bottom_ms, metric))
        run_steady = ratio(self._run_value(top_label, route, top_ms, "steady sRPS"),
                           self._run_value(bottom_label, route, bottom_ms, "steady sRPS"))
        decisive = run_steady if run_steady is not None else run_metric
        agrees = None if decisive is None else (
            decisive > expect_above if higher else decisive < expect_above)
        if decisive is None:
            note = "; ".join(n for n in (note, "cells missing or failed in this run") if n)
        return Check(conclusion, what, expected, metric, _fmt(study), _fmt(run_metric),
                     _fmt(run_steady), agrees, note)

    def too_many_clients_check(self) -> Check:
        what = "Async Limited: failures \"too many clients\""
        column = self.by_label.get("Async Limited")
        if column is None:
            return Check(3, what, "present", "failures", "present", "n/a", "n/a", None,
                         "cannot compare: no column labelled Async Limited")
        finished = [c for c in self.run.cells if c.column == column and c.status != "missing"]
        count = sum(int(n) for c in finished
                    for kind, n in (c.metrics.get("failures_by_kind") or {}).items()
                    if TOO_MANY_CLIENTS.search(str(kind)) and isinstance(n, int | float))
        if not finished:
            return Check(3, what, "present", "failures", "present", "n/a", "n/a", None,
                         "cannot compare: no finished Async Limited cell")
        return Check(3, what, "present", "failures", "present", f"{count:,} in {column}",
                     "n/a", count > 0)

    def verdicts(self) -> list[Verdict]:
        latencies = self.run.latencies
        routes = self.run.routes
        low = latencies[0] if latencies else 0
        highs = [latency for latency in latencies if latency > low]
        checks: dict[int, list[Check]] = {1: [], 2: [], 3: []}
        if "cpu" in routes:
            for latency in [low, *highs[-1:]]:
                for other in ("Async Unlimited", "Async Limited"):
                    checks[1].append(self.ratio_check(
                        1, "cpu", ("Sync", latency), (other, latency), "total successes", 1,
                        higher=True))
        for route in (r for r in routes if r != "cpu"):
            for other in ("Async Unlimited", "Async Limited"):
                checks[2].append(self.ratio_check(2, route, (other, low), ("Sync", low),
                                                  "max sRPS", 1, higher=True))
            for high in highs:
                checks[2].append(self.ratio_check(2, route, ("Sync", high), ("Sync", low),
                                                  "max sRPS", COLLAPSE_BELOW, higher=False))
                for label in ("Async Unlimited", "Async Limited"):
                    checks[2].append(self.ratio_check(2, route, (label, high), (label, low),
                                                      "max sRPS", KEEPS_FROM, higher=True))
            if highs:
                checks[2].append(self.ratio_check(
                    2, route, ("Async Unlimited", highs[-1]), ("Async Limited", highs[-1]),
                    "max sRPS", 1, higher=True))
        checks[3].append(self.too_many_clients_check())
        notes = {
            1: "Tested: Sync ÷ Async on cpu/ above 1 (more successes). \"Erratic\" is not "
               "reduced to a ratio; see the CIs and the time series.",
            2: "",
            3: "",
        }
        if not highs:
            notes[2] = "This run has a single latency, so the latency ratios cannot be made."
        if "cpu" not in routes:
            notes[1] = "This run has no cpu/ cells."
        return [Verdict(n, CONCLUSIONS[n], _held(checks[n]), checks[n], notes[n])
                for n in (1, 2, 3)]


def _held(checks: list[Check]) -> str:
    decided = [c.agrees for c in checks if c.agrees is not None]
    if not decided:
        return "cannot tell"
    if all(decided):
        return "holds"
    if not any(decided):
        return "does not hold"
    return "partly"
