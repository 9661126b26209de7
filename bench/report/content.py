"""What the report says, as plain data (tables, sentences, figures) for both renderers.

Every string here is plain text: report.html escapes it (autoescape), report.md escapes
the characters Markdown would read as markup. The tables live in `tables.py` (matrix,
comparison), `interaction.py` and `resources.py` (resources, failures); this module
composes them with what ran, the caveats and the figures.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import cpu_work_text
from bench.report import plots
from bench.report.choose import METHOD as CHOOSE_METHOD
from bench.report.choose import choice_sentences, choose
from bench.report.data import Run
from bench.report.interaction import (
    INTERACTION_METHOD,
    interaction_sentence,
    interaction_table,
    interactions,
)
from bench.report.resources import failures_table, resource_values, resources_table
from bench.report.series import cell_series
from bench.report.stats import (
    WIDE_CI_FRACTION,
    calibration_sentence,
    repeat_pairs,
)
from bench.report.study import Comparison, Verdict
from bench.report.tables import (
    Estimates,
    Table,
    comparison_table,
    matrix_table,
    run_estimates,
    steady_method,
)

# Cells' probes (metrics machine_probe_ms) further apart than this make a caveat.
SPEED_SPREAD = 0.10


@dataclass
class Figure:
    name: str
    png: Path
    alt: str


@dataclass
class CellFigure:
    cell_id: str
    status: str
    figure: Figure | None
    note: str


@dataclass
class RouteChoice:
    """What to choose on one route: the figure and, per latency, the sentences."""

    route: str
    figure: Figure | None
    latencies: list[tuple[int, list[str]]]


@dataclass
class Report:
    title: str
    choices: list[RouteChoice]
    choose_method: str
    summary: list[str]
    verdict_lines: list[str]
    what_ran: list[tuple[str, str]]
    caveats: list[str]
    study_tables: list[Table]
    steady_tables: list[Table]
    steady_method: str
    calibration: str | None
    interaction_figure: Figure | None
    interaction_sentences: list[str]
    interaction_method: str
    interaction_table: Table | None
    verdicts: list[Verdict]
    comparison_table: Table
    resources_table: Table | None
    resources_figure: Figure | None
    failures_table: Table | None
    cell_figures: list[CellFigure]
    files: list[Path] = field(default_factory=list)


def what_ran(run: Run) -> list[tuple[str, str]]:
    """What ran, as (what, value) lines: the report's and the comparison's."""
    info = run.info
    machine = info.get("machine") or {}
    config = info.get("config") or {}
    profile = info.get("profile") or {}
    packages = info.get("packages") or {}
    commit = info.get("git_commit")
    items = [
        ("run", f"{info.get('run_id', run.folder.name)} ({info.get('status', '?')})"),
        ("date", f"{info.get('started_at', '?')} to {info.get('ended_at') or 'not ended'}"),
        ("machine", f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', '?')}, "
                    f"{machine.get('memory_gib', '?')} GiB; {machine.get('kernel', '')}"),
        ("Python", str(machine.get("python", "?"))),
        ("packages", ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) or "?"),
        ("PostgreSQL", str(info.get("postgres_version") or "?")),
        ("latency backend", f"{info.get('latency_backend', '?')}"
                            f" ({info.get('latency_backend_reason') or 'no reason given'})"),
        ("profile", ", ".join(f"{k} {v}" for k, v in profile.items()) or "?"),
        ("repeats", str(config.get("repeats", "?"))),
        ("cpu/ work", cpu_work_text(info.get("cpu_work"))),
        ("matrix", f"{len(run.columns)} columns x {len(run.routes)} routes x "
                   f"{len(run.latencies)} latencies = {len(run.cells)} cells"),
        ("placement", ", ".join(f"{k} {v}" for k, v in
                                (info.get("placement") or {}).items()) or "?"),
        ("git commit", "unknown" if not commit else
         f"{commit}{' (uncommitted changes)' if info.get('git_dirty') else ''}"),
    ]
    if config.get("target"):
        items.append(("target", str(config["target"])))
    return items


class Builder:
    def __init__(self, run: Run, figures_dir: Path) -> None:
        self.run = run
        self.figures_dir = figures_dir
        self.columns = [c.name for c in run.columns]
        self.routes = run.routes
        self.latencies = run.latencies
        self.estimates: Estimates = run_estimates(run)
        self.files: list[Path] = []

    # -- what ran ------------------------------------------------------------------------

    def what_ran(self) -> list[tuple[str, str]]:
        return what_ran(self.run)

    def caveats(self) -> list[str]:
        notes = [str(c) for c in self.run.info.get("caveats") or []]
        status = self.run.info.get("status")
        if status not in (None, "complete"):
            notes.append(f"the run's status is {status}: the report shows what finished")
        counts: dict[str, list[str]] = {}
        for cell in self.run.cells:
            counts.setdefault(cell.status, []).append(cell.cell_id)
        for state in ("missing", "failed", "interrupted"):
            if counts.get(state):
                notes.append(f"{len(counts[state])} cell(s) {state}: "
                             + ", ".join(counts[state]))
        saturated = [c.cell_id for c in self.run.cells
                     if c.metrics.get("load_generator_saturated") is True]
        if saturated:
            notes.append("the load generator (Locust) was saturated, so these cells may "
                         "understate the server: " + ", ".join(saturated))
        unseen: dict[str, list[str]] = {}
        for cell in self.run.cells:
            for figure in cell.not_measured:
                unseen.setdefault(figure, []).append(cell.cell_id)
        by_cells: dict[tuple[str, ...], list[str]] = {}
        for figure, cells in unseen.items():
            by_cells.setdefault(tuple(cells), []).append(figure)
        for cell_ids, figures in by_cells.items():
            where = "every cell" if len(cell_ids) == len(self.run.cells) \
                else ", ".join(cell_ids)
            notes.append(f"not measured in {where}: {', '.join(figures)}")
        workers = sorted({c.load_workers for c in self.run.cells if c.load_workers})
        if workers:
            notes.append(f"load from {'/'.join(map(str, workers))} remote Locust worker(s) "
                         "(load_workers.csv per cell); Locust CPU in resources.csv is the "
                         "master's")
        wide = [f"{column} {route}/ {latency} ms" for (column, route, latency), e
                in self.estimates.items() if e.wide]
        if wide:
            notes.append(f"95% CI wider than {WIDE_CI_FRACTION:.0%} of the mean in "
                         f"{len(wide)} cell(s): " + ", ".join(wide))
        notes += self.measurement_notes()
        return notes

    def measurement_notes(self) -> list[str]:
        """How the holds ended, which cells never settled, and how noisy the machine was."""
        notes = []
        finished = [c for c in self.run.cells if c.status == "ok"]
        by_precision = [c for c in finished if c.stopped_by == "precision"]
        precision = (self.run.profile.precision if self.run.profile else 0) or None
        if finished and precision:
            holds = sorted(c.metric("hold_s") or 0 for c in finished)
            missed = [c.cell_id for c in finished if c.stopped_by != "precision"
                      and "steady_half_width_pct" in c.metrics
                      and _missed(c.metric("steady_half_width_pct"), 100 * precision)]
            notes.append(f"{len(by_precision)} of {len(finished)} cells reached the precision "
                         f"target (95% CI half-width <= {precision:.0%}) and stopped; the "
                         f"others held to the profile's maximum (median hold "
                         f"{statistics.median(holds):.1f} s)"
                         + (f"; {len(missed)} missed the target: " + ", ".join(missed)
                            if missed else ""))
        nothing = [c.cell_id for c in finished if c.metrics.get("total_requests") == 0]
        if nothing:
            notes.append(f"{len(nothing)} cell(s) ended no request within the hold while "
                         "the server was busy: each request took longer than the hold, and "
                         "0 sRPS is what they measured: " + ", ".join(nothing))
        unsteady = [c.cell_id for c in finished if c.metrics.get("unsteady") is True]
        if unsteady:
            notes.append(f"{len(unsteady)} cell(s) never settled (unsteady: their throughput "
                         "still drifted at the end of the hold): " + ", ".join(unsteady))
        calibration = self.run.info.get("machine_calibration") or {}
        if calibration.get("noisy"):
            notes.append(f"noisy machine: the CPU calibration loop varied by "
                         f"{100 * calibration.get('cv', 0):.1f}% before the run")
        probes = sorted((v, c.cell_id) for c in finished
                        if (v := c.metric("machine_probe_ms")) is not None and v > 0)
        if probes and probes[-1][0] / probes[0][0] - 1 > SPEED_SPREAD:
            (fast, fast_id), (slow, slow_id) = probes[0], probes[-1]
            notes.append(f"the machine's speed moved during the run: its CPU probe took "
                         f"{fast:.2f} ms during {fast_id} and {slow:.2f} ms during {slow_id} "
                         f"({100 * (slow / fast - 1):.0f}% slower); a cell its server's "
                         "own CPU limits can differ by up to that much from the machine "
                         "alone (not cpu/ with a CPU-time budget: its requests cost the "
                         "same CPU whatever the speed)")
        steal = [(c.cell_id, v) for c in finished if (v := c.metric("mean_steal_pct")) and v > 5]
        if steal:
            notes.append("CPU steal above 5% of a core (another guest took the CPU): "
                         + ", ".join(f"{cid} {v:.0f}%" for cid, v in steal))
        outside = [(c.cell_id, v) for c in finished
                   if (v := c.metric("mean_outside_cpu_pct")) and v > 20]
        if outside:
            notes.append("processes outside the cell used more than 20% of a core: "
                         + ", ".join(f"{cid} {v:.0f}%" for cid, v in outside))
        return notes

    # -- figures -------------------------------------------------------------------------

    def _figure(self, paths: list[Path], alt: str) -> Figure:
        self.files.extend(paths)
        return Figure(paths[0].stem, paths[0], alt)

    def cell_figures(self) -> list[CellFigure]:
        out = []
        for cell in self.run.cells:
            if cell.status == "missing":
                out.append(CellFigure(cell.cell_id, cell.status, None, "missing: no cell.json"))
                continue
            series = cell_series(cell.folder)
            if series is None or not len(series):
                out.append(CellFigure(cell.cell_id, cell.status, None,
                                      "no per-second history in this cell"))
                continue
            phases = plots.Phases(cell.metric("ramp_s"), cell.metric("warmup_s"),
                                  None if cell.metric("warmup_s") is None else
                                  (cell.metric("warmup_s") or 0) + (cell.metric("window_s") or 0))
            path = plots.timeseries_figure(cell.cell_id, series, phases, self.figures_dir)
            self.files.append(path)
            note = f"from {series.source}"
            if cell.status != "ok":
                note = f"{cell.status}: {cell.reason or 'no reason given'}; {note}"
            out.append(CellFigure(cell.cell_id, cell.status,
                                  Figure(path.stem, path, f"time series of {cell.cell_id}"),
                                  note))
        return out

    def choices(self) -> list[RouteChoice]:
        out = []
        for route in self.routes:
            found = [choose(self.run, self.estimates, route, latency)
                     for latency in self.latencies]
            figure = None
            if any(c.points for c in found):
                figure = self._figure(
                    plots.choose_figure(route, self.columns, found, self.figures_dir),
                    f"{route}/: steady sRPS against peak DB connections and against peak "
                    "server + DB MiB, one panel per latency")
            out.append(RouteChoice(route, figure,
                                   [(c.latency_ms, choice_sentences(c)) for c in found]))
        return out

    def build(self) -> Report:
        interaction_fig = None
        if self.estimates:
            interaction_fig = self._figure(
                plots.interaction_figure(self.columns, self.routes, self.latencies,
                                         self.estimates, self.figures_dir),
                "steady sRPS vs latency, one panel per route, one line per column")
        peaks = resource_values(self.run)
        resources_fig = None
        if peaks:
            resources_fig = self._figure(
                plots.resources_figure(self.columns, self.routes, peaks,
                                       self.figures_dir),
                "peak memory, DB connections and memory per request, per column and route")
        found, skipped = interactions(self.run, self.estimates)
        sentences = [interaction_sentence(f) for f in found] + skipped
        verdicts = Comparison(self.run).verdicts()
        verdict_lines = [f"Study conclusion {v.number} ({v.short}): {v.held}."
                         for v in verdicts]
        report = Report(
            title=f"Asynchronize-Django run {self.run.info.get('run_id', self.run.folder.name)}",
            choices=self.choices(),
            choose_method=CHOOSE_METHOD,
            summary=sentences,
            verdict_lines=verdict_lines,
            what_ran=self.what_ran(),
            caveats=self.caveats(),
            study_tables=[matrix_table(self.run, self.estimates, r, steady=False)
                          for r in self.routes],
            steady_tables=[matrix_table(self.run, self.estimates, r, steady=True)
                           for r in self.routes],
            steady_method=steady_method(self.estimates),
            calibration=calibration_sentence(repeat_pairs(self.run.cells)),
            interaction_figure=interaction_fig,
            interaction_sentences=sentences,
            interaction_method=INTERACTION_METHOD,
            interaction_table=interaction_table(found),
            verdicts=verdicts,
            comparison_table=comparison_table(verdicts),
            resources_table=resources_table(peaks),
            resources_figure=resources_fig,
            failures_table=failures_table(self.run),
            cell_figures=self.cell_figures(),
        )
        report.files = list(self.files)
        return report


def build_content(run: Run, figures_dir: Path) -> Report:
    return Builder(run, figures_dir).build()


def _missed(half_width_pct: float | None, target_pct: float) -> bool:
    """Whether a cell's half-width misses the target; one that is not a finite number (a
    window without one success) misses it too."""
    return half_width_pct is None or half_width_pct > target_pct
