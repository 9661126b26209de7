"""What the report says, as plain data (tables, sentences, figures) for both renderers.

Every string here is plain text: report.html escapes it (autoescape), report.md escapes
the characters Markdown would read as markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import plots
from bench.report.data import CellRecord, Run
from bench.report.series import cell_series
from bench.report.stats import (
    METHOD_BATCHES,
    METHOD_NONE,
    METHOD_REPEATS,
    WIDE_CI_FRACTION,
    Estimate,
    Interaction,
    interaction,
    mean_metric,
    ok_cells,
    steady_estimate,
)
from bench.report.study import ROUTE_TITLES, TABLE_NUMBERS, Comparison, Verdict

WIDE_MARK = "†"
WIDE_NOTE = (f"{WIDE_MARK} 95% CI wider than {WIDE_CI_FRACTION:.0%} of the mean: "
             "too noisy to trust on its own.")


@dataclass
class Cell:
    text: str
    numeric: bool = False
    state: str = ""  # "", "missing", "failed", "wide": a CSS class in report.html


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    footnotes: list[str] = field(default_factory=list)  # numbered: [1], [2]...
    notes: list[str] = field(default_factory=list)  # plain notes under the table

    @property
    def numeric(self) -> list[bool]:
        """Per column: every body cell is a number (right-aligned)."""
        return [bool(self.rows) and all(row[i].numeric or row[i].state in ("missing", "failed")
                                        for row in self.rows if i < len(row))
                for i in range(len(self.header))]


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
class Report:
    title: str
    summary: list[str]
    verdict_lines: list[str]
    what_ran: list[tuple[str, str]]
    caveats: list[str]
    study_tables: list[Table]
    steady_tables: list[Table]
    steady_method: str
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


def number(value: float | None, digits: int | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if digits is None:
        digits = 1 if abs(value) >= 1 else 2
    return f"{value:,.{digits}f}"


def fold_phrase(fold: float, subject: str) -> str:
    """How a throughput changed, as a factor a reader can repeat."""
    if abs(fold - 1) < 0.05:
        return f"barely changes {subject} (÷{fold:.2f})"
    if fold >= 1:
        factor = f"{fold:.2g}" if fold < 10 else f"{fold:.0f}"
        return f"divides {subject} by {factor}"
    return f"multiplies {subject} by {1 / fold:.2g}"


class Builder:
    def __init__(self, run: Run, figures_dir: Path) -> None:
        self.run = run
        self.figures_dir = figures_dir
        self.columns = [c.name for c in run.columns]
        self.routes = run.routes
        self.latencies = run.latencies
        self.estimates: dict[tuple[str, str, int], Estimate] = {}
        for column in self.columns:
            for route in self.routes:
                for latency in self.latencies:
                    estimate = steady_estimate(run.group(column, route, latency))
                    if estimate is not None:
                        self.estimates[column, route, latency] = estimate
        self.files: list[Path] = []

    # -- matrix tables -------------------------------------------------------------------

    def _group_state(self, cells: list[CellRecord], footnotes: list[str]) -> Cell | None:
        """'missing' / 'failed [n]' for a group without a successful repeat, else None."""
        if ok_cells(cells):
            return None
        broken = [c for c in cells if c.status not in ("ok", "missing")]
        if not broken:
            return Cell("missing", state="missing")
        first = broken[0]
        footnotes.append(f"{first.cell_id}: {first.status}"
                         f"{': ' + first.reason if first.reason else ''}")
        return Cell(f"{first.status} [{len(footnotes)}]", state="failed")

    def _partial_note(self, cells: list[CellRecord]) -> str:
        good = len(ok_cells(cells))
        return "" if good == len(cells) else f" ({good} of {len(cells)} repeats)"

    def matrix_table(self, route: str, steady: bool) -> Table:
        number_of = TABLE_NUMBERS.get(route)
        prefix = f"Table {number_of}, " if number_of else ""
        what = "steady sRPS ± 95% CI" if steady else "max sRPS & total successes"
        title = f"{prefix}{ROUTE_TITLES.get(route, route + '/')}: {what}"
        footnotes: list[str] = []
        rows = []
        any_wide = False
        for latency in self.latencies:
            row = [Cell(str(latency), numeric=True)]
            for column in self.columns:
                cells = self.run.group(column, route, latency)
                if not cells:
                    row.append(Cell("not planned", state="missing"))
                    continue
                state = self._group_state(cells, footnotes)
                if state is not None:
                    row.append(state)
                    continue
                note = self._partial_note(cells)
                if steady:
                    estimate = self.estimates.get((column, route, latency))
                    if estimate is None:
                        row.append(Cell("n/a" + note, numeric=True))
                        continue
                    text = number(estimate.mean)
                    if estimate.low is not None and estimate.high is not None:
                        half = (estimate.high - estimate.low) / 2
                        text += f" ± {number(half, 1 if abs(estimate.mean) >= 1 else 2)}"
                    if estimate.wide:
                        any_wide = True
                        text += f" {WIDE_MARK}"
                    row.append(Cell(text + note, numeric=True,
                                    state="wide" if estimate.wide else ""))
                else:
                    peak = mean_metric(cells, "max_srps")
                    successes = mean_metric(cells, "total_successes")
                    row.append(Cell(f"{number(peak)} & {number(successes, 0)}{note}",
                                    numeric=True))
            rows.append(row)
        notes = [WIDE_NOTE] if steady and any_wide else []
        return Table(title, ["latency ms", *self.columns], rows, footnotes, notes)

    def steady_method(self) -> str:
        methods = {e.method for e in self.estimates.values()}
        parts = []
        if METHOD_REPEATS in methods:
            parts.append("where a cell has several successful repeats, the mean over the "
                         "repeats with a Student t interval from them (n - 1 degrees of "
                         "freedom)")
        if METHOD_BATCHES in methods:
            parts.append("where a cell has one successful repeat, its own batch-means "
                         "interval (5 batches of the hold phase, Student t, 4 degrees of "
                         "freedom)")
        if METHOD_NONE in methods:
            parts.append("cells without an interval show the mean alone")
        if not parts:
            return "No cell has a steady sRPS."
        return "95% confidence intervals: " + "; ".join(parts) + "."

    # -- interaction ---------------------------------------------------------------------

    def interaction_columns(self) -> tuple[str, str] | None:
        columns = self.run.columns
        labelled = {c.study_label: c.name for c in reversed(columns) if c.study_label}
        sync = labelled.get("Sync") or next(
            (c.name for c in columns if c.interface == "wsgi"), None)
        asyn = labelled.get("Async Unlimited") or next(
            (c.name for c in columns if c.interface == "asgi"), None)
        return None if sync is None or asyn is None else (sync, asyn)

    def interactions(self) -> tuple[list[Interaction], list[str]]:
        pair = self.interaction_columns()
        if pair is None:
            return [], ["The three-way interaction needs a sync (WSGI) and an async (ASGI) "
                        "column; this run does not have both."]
        if "cpu" not in self.routes or len(self.latencies) < 2:
            return [], ["The three-way interaction needs cpu/ and an I/O route at two "
                        "latencies; this run does not have them."]
        io_routes = [r for r in self.routes if r != "cpu"]
        if not io_routes:
            return [], ["The three-way interaction needs an I/O route; this run has only "
                        "cpu/."]
        hold = (self.run.profile.duration_s or 0) - (self.run.profile.hold_start_s or 0)
        floor = 0.5 / hold if hold > 0 else 0.01
        found: list[Interaction] = []
        skipped: list[str] = []
        low, high = self.latencies[0], self.latencies[-1]
        for route in io_routes:
            result = interaction(lambda c, r, ms: self.estimates.get((c, r, ms)), pair[0],
                                 pair[1], route, low, high, floor)
            if isinstance(result, str):
                skipped.append(f"The three-way interaction for {route}/ cannot be estimated: "
                               f"it {result}.")
            else:
                found.append(result)
        return found, skipped

    @staticmethod
    def interaction_sentence(found: Interaction) -> str:
        interval = ("no interval: a cell lacks a confidence interval" if found.ci is None
                    else f"95% CI {found.ci[0]:.2f} to {found.ci[1]:.2f}")
        route = f"{found.io_route}/"
        sentence = (
            f"Going from {found.low_ms} to {found.high_ms} ms "
            f"{fold_phrase(found.sync_io_fold, f'sync {route} throughput')} "
            f"({found.sync_column}) and "
            f"{fold_phrase(found.async_io_fold, 'async')} ({found.async_column}), while "
            f"on cpu/ it {fold_phrase(found.sync_cpu_fold, 'sync')} and "
            f"{fold_phrase(found.async_cpu_fold, 'async')}: the three-way interaction on "
            f"log steady sRPS is {found.value:.2f} ({interval}), a factor of "
            f"{math.exp(abs(found.value)):.2g}.")
        if found.floored:
            sentence += (" Zero throughput in " + ", ".join(found.floored) + " was replaced "
                         "by half a success over the hold phase to take its log.")
        return sentence

    def interaction_table(self, found: list[Interaction]) -> Table | None:
        if not found:
            return None
        rows = []
        for item in found:
            ci = "n/a" if item.ci is None else f"{item.ci[0]:.2f} to {item.ci[1]:.2f}"
            rows.append([Cell(f"{item.io_route}/"), Cell(f"{item.sync_io_fold:.3g}", True),
                         Cell(f"{item.async_io_fold:.3g}", True),
                         Cell(f"{item.sync_cpu_fold:.3g}", True),
                         Cell(f"{item.async_cpu_fold:.3g}", True),
                         Cell(f"{item.value:.2f}", True), Cell(ci, True)])
        first = found[0]
        return Table(
            f"Three-way interaction ({first.sync_column} vs {first.async_column}, "
            f"{first.low_ms} vs {first.high_ms} ms)",
            ["I/O route", "sync I/O ÷", "async I/O ÷", "sync cpu ÷", "async cpu ÷",
             "interaction (log)", "95% CI"], rows, [],
            ["÷: steady sRPS at the low latency divided by steady sRPS at the high latency."])

    # -- study comparison ----------------------------------------------------------------

    def comparison_table(self, verdicts: list[Verdict]) -> Table:
        rows = []
        for verdict in verdicts:
            for check in verdict.checks:
                agrees = {True: "yes", False: "no", None: "n/a"}[check.agrees]
                rows.append([Cell(str(check.conclusion)), Cell(check.what),
                             Cell(check.expected), Cell(check.study_metric),
                             Cell(check.study, True), Cell(check.run_study_metric, True),
                             Cell(check.run_steady, True),
                             Cell(agrees, state="" if check.agrees is not False else "failed"),
                             Cell(check.note)])
        return Table("Study comparison: ratios, this run beside the study",
                     ["#", "ratio", "expected", "study metric", "study", "run (study metric)",
                      "run (steady sRPS)", "agrees", "note"], rows, [],
                     ["Agreement is judged on steady sRPS where the run has it, else on the "
                      "study's metric. A sweep's first column with a study label stands for "
                      "that setup."])

    # -- resources and failures ----------------------------------------------------------

    def resource_values(self) -> dict[tuple[str, str], dict[str, float | None]]:
        values: dict[tuple[str, str], dict[str, float | None]] = {}
        keys = ("peak_server_rss_mib", "peak_server_db_rss_mib", "peak_server_threads",
                "peak_db_connections")
        for column in self.columns:
            for route in self.routes:
                cells = [c for c in self.run.cells if (c.column, c.route) == (column, route)
                         and c.status != "missing"]
                if not cells:
                    continue
                entry: dict[str, float | None] = {}
                for key in keys:
                    found = [v for c in cells if (v := c.metric(key)) is not None]
                    entry[key] = max(found) if found else None
                per_request = [v for c in cells if (v := c.metric("rss_per_in_flight_kib"))
                               is not None]
                entry["rss_per_in_flight_kib"] = (sum(per_request) / len(per_request)
                                                  if per_request else None)
                values[column, route] = entry
        return values

    def resources_table(self, values: dict[tuple[str, str], dict[str, float | None]]
                        ) -> Table | None:
        if not values:
            return None
        rows = []
        for (column, route), entry in values.items():
            rows.append([Cell(column), Cell(f"{route}/"),
                         Cell(number(entry["peak_server_rss_mib"]), True),
                         Cell(number(entry["peak_server_db_rss_mib"]), True),
                         Cell(number(entry["peak_server_threads"], 0), True),
                         Cell(number(entry["peak_db_connections"], 0), True),
                         Cell(number(entry["rss_per_in_flight_kib"], 0), True)])
        return Table("Resources per column and route",
                     ["column", "route", "peak server MiB", "peak server + DB MiB",
                      "peak threads", "peak DB connections", "KiB per concurrent request"],
                     rows, [],
                     ["Peaks are the maximum over latencies and repeats; memory is "
                      "proportional set size. KiB per concurrent request: growth of server + "
                      "DB memory over the run divided by the mean number of requests in "
                      "flight (Little's law), averaged over the cells."])

    def failures_table(self) -> Table | None:
        cells = [c for c in self.run.cells if c.metrics.get("failures_by_kind")]
        kinds: dict[str, None] = {}
        for cell in cells:
            for kind in cell.metrics["failures_by_kind"]:
                kinds[str(kind)] = None
        if not kinds:
            return None
        rows = []
        for cell in cells:
            found = cell.metrics["failures_by_kind"]
            total = cell.metric("total_requests")
            rows.append([Cell(cell.cell_id), Cell(cell.status),
                         *[Cell(f"{found[k]:,}" if isinstance(found.get(k), int) else
                                str(found.get(k, "")), True) for k in kinds],
                         Cell(number(total, 0), True)])
        return Table("Failed requests by kind, per cell",
                     ["cell", "status", *kinds, "all requests"], rows)

    # -- what ran ------------------------------------------------------------------------

    def what_ran(self) -> list[tuple[str, str]]:
        info = self.run.info
        machine = info.get("machine") or {}
        config = info.get("config") or {}
        profile = info.get("profile") or {}
        packages = info.get("packages") or {}
        commit = info.get("git_commit")
        items = [
            ("run", f"{info.get('run_id', self.run.folder.name)} ({info.get('status', '?')})"),
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
            ("matrix", f"{len(self.columns)} columns x {len(self.routes)} routes x "
                       f"{len(self.latencies)} latencies = {len(self.run.cells)} cells"),
            ("placement", ", ".join(f"{k} {v}" for k, v in
                                    (info.get("placement") or {}).items()) or "?"),
            ("git commit", "unknown" if not commit else
             f"{commit}{' (uncommitted changes)' if info.get('git_dirty') else ''}"),
        ]
        if config.get("target"):
            items.append(("target", str(config["target"])))
        return items

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
        wide = [f"{column} {route}/ {latency} ms" for (column, route, latency), e
                in self.estimates.items() if e.wide]
        if wide:
            notes.append(f"95% CI wider than {WIDE_CI_FRACTION:.0%} of the mean in "
                         f"{len(wide)} cell(s): " + ", ".join(wide))
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
            path = plots.timeseries_figure(cell.cell_id, series, self.run.profile,
                                           self.figures_dir)
            self.files.append(path)
            note = f"from {series.source}"
            if cell.status != "ok":
                note = f"{cell.status}: {cell.reason or 'no reason given'}; {note}"
            out.append(CellFigure(cell.cell_id, cell.status,
                                  Figure(path.stem, path, f"time series of {cell.cell_id}"),
                                  note))
        return out

    def build(self) -> Report:
        interaction_fig = None
        if self.estimates:
            interaction_fig = self._figure(
                plots.interaction_figure(self.columns, self.routes, self.latencies,
                                         self.estimates, self.figures_dir),
                "steady sRPS vs latency, one panel per route, one line per column")
        resource_values = self.resource_values()
        resources_fig = None
        if resource_values:
            resources_fig = self._figure(
                plots.resources_figure(self.columns, self.routes, resource_values,
                                       self.figures_dir),
                "peak memory, DB connections and memory per request, per column and route")
        found, skipped = self.interactions()
        sentences = [self.interaction_sentence(f) for f in found] + skipped
        verdicts = Comparison(self.run).verdicts()
        verdict_lines = [f"Study conclusion {v.number} ({v.short}): {v.held}."
                         for v in verdicts]
        report = Report(
            title=f"Asynchronize-Django run {self.run.info.get('run_id', self.run.folder.name)}",
            summary=sentences,
            verdict_lines=verdict_lines,
            what_ran=self.what_ran(),
            caveats=self.caveats(),
            study_tables=[self.matrix_table(r, steady=False) for r in self.routes],
            steady_tables=[self.matrix_table(r, steady=True) for r in self.routes],
            steady_method=self.steady_method(),
            interaction_figure=interaction_fig,
            interaction_sentences=sentences,
            interaction_method=INTERACTION_METHOD,
            interaction_table=self.interaction_table(found),
            verdicts=verdicts,
            comparison_table=self.comparison_table(verdicts),
            resources_table=self.resources_table(resource_values),
            resources_figure=resources_fig,
            failures_table=self.failures_table(),
            cell_figures=self.cell_figures(),
        )
        report.files = list(self.files)
        return report


INTERACTION_METHOD = (
    "interaction = [(log S_sync,io,high - log S_sync,io,low) - (log S_async,io,high - log "
    "S_async,io,low)] - [the same on cpu/], on steady sRPS S, with the study-labelled Sync "
    "and Async Unlimited columns (else the first WSGI and the first ASGI column), one value "
    "per I/O route. Negative means latency costs sync more than async on the I/O route "
    "beyond what it costs each on cpu/. Interval: delta method; each cell's standard error "
    "is its CI half-width over the t quantile of its degrees of freedom, divided by its mean "
    "for the log scale; the eight variances are summed and a normal 95% quantile applied.")


def build_content(run: Run, figures_dir: Path) -> Report:
    return Builder(run, figures_dir).build()
