"""Tables as plain data, and the matrix tables: study metric and steady sRPS per latency.

A `TableCell` is one cell of a printed table (the runner's benchmark cells are records in
`bench.report.data`); `state` becomes a CSS class in report.html.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.report.data import CellRecord, Run
from bench.report.stats import (
    METHOD_BATCHES,
    METHOD_NONE,
    METHOD_REPEATS,
    WIDE_CI_FRACTION,
    Estimate,
    mean_metric,
    ok_cells,
    steady_estimate,
)
from bench.report.study import ROUTE_TITLES, TABLE_NUMBERS, Verdict

UNSTEADY_MARK = "‡"
UNSTEADY_NOTE = (f"{UNSTEADY_MARK} unsteady: the throughput never settled (its window's two "
                 "halves differ); the figure is an average over a drift, not a steady state.")
WIDE_MARK = "†"
WIDE_NOTE = (f"{WIDE_MARK} 95% CI wider than {WIDE_CI_FRACTION:.0%} of the mean: "
             "too noisy to trust on its own.")

# (column, route, latency ms) -> steady sRPS estimate, as the report's builder computes it.
Estimates = dict[tuple[str, str, int], Estimate]


def run_estimates(run: Run) -> Estimates:
    """Steady sRPS of every (column, route, latency) of `run` that has one."""
    estimates: Estimates = {}
    for column in run.columns:
        for route in run.routes:
            for latency in run.latencies:
                estimate = steady_estimate(run.group(column.name, route, latency))
                if estimate is not None:
                    estimates[column.name, route, latency] = estimate
    return estimates


@dataclass
class TableCell:
    text: str
    numeric: bool = False
    # a CSS class: "missing", "failed", "wide"; in compare.html also "faster", "slower", "differs"
    state: str = ""


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[TableCell]]
    footnotes: list[str] = field(default_factory=list)  # numbered: [1], [2]...
    notes: list[str] = field(default_factory=list)  # plain notes under the table

    @property
    def numeric(self) -> list[bool]:
        """Per column: every body cell is a number (right-aligned)."""
        return [bool(self.rows) and all(row[i].numeric or row[i].state in ("missing", "failed")
                                        for row in self.rows if i < len(row))
                for i in range(len(self.header))]


def number(value: float | None, digits: int | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if digits is None:
        digits = 1 if abs(value) >= 1 else 2
    return f"{value:,.{digits}f}"


def steady_text(estimate: Estimate) -> str:
    """"mean ± half-width", with WIDE_MARK when the interval is too wide to trust."""
    text = number(estimate.mean)
    if estimate.low is not None and estimate.high is not None:
        half = (estimate.high - estimate.low) / 2
        text += f" ± {number(half, 1 if abs(estimate.mean) >= 1 else 2)}"
    return text + (f" {WIDE_MARK}" if estimate.wide else "") + (
        f" {UNSTEADY_MARK}" if estimate.unsteady else "")


def _group_state(cells: list[CellRecord], footnotes: list[str]) -> TableCell | None:
    """'missing' / 'failed [n]' for a group without a successful repeat, else None."""
    if ok_cells(cells):
        return None
    broken = [c for c in cells if c.status not in ("ok", "missing")]
    if not broken:
        return TableCell("missing", state="missing")
    first = broken[0]
    footnotes.append(f"{first.cell_id}: {first.status}"
                     f"{': ' + first.reason if first.reason else ''}")
    return TableCell(f"{first.status} [{len(footnotes)}]", state="failed")


def _partial_note(cells: list[CellRecord]) -> str:
    good = len(ok_cells(cells))
    return "" if good == len(cells) else f" ({good} of {len(cells)} repeats)"


def matrix_table(run: Run, estimates: Estimates, route: str, steady: bool) -> Table:
    columns = [c.name for c in run.columns]
    number_of = TABLE_NUMBERS.get(route)
    prefix = f"Table {number_of}, " if number_of else ""
    what = "steady sRPS ± 95% CI" if steady else "max sRPS & total successes"
    title = f"{prefix}{ROUTE_TITLES.get(route, route + '/')}: {what}"
    footnotes: list[str] = []
    rows = []
    any_wide = any_unsteady = False
    for latency in run.latencies:
        row = [TableCell(str(latency), numeric=True)]
        for column in columns:
            cells = run.group(column, route, latency)
            if not cells:
                row.append(TableCell("not planned", state="missing"))
                continue
            state = _group_state(cells, footnotes)
            if state is not None:
                row.append(state)
                continue
            note = _partial_note(cells)
            if steady:
                estimate = estimates.get((column, route, latency))
                if estimate is None:
                    row.append(TableCell("n/a" + note, numeric=True))
                    continue
                any_wide = any_wide or estimate.wide
                any_unsteady = any_unsteady or estimate.unsteady
                row.append(TableCell(steady_text(estimate) + note, numeric=True,
                                     state="wide" if estimate.wide else ""))
            else:
                peak = mean_metric(cells, "max_srps")
                successes = mean_metric(cells, "total_successes")
                row.append(TableCell(f"{number(peak)} & {number(successes, 0)}{note}",
                                     numeric=True))
        rows.append(row)
    notes = ([WIDE_NOTE] if steady and any_wide else []) + (
        [UNSTEADY_NOTE] if steady and any_unsteady else [])
    return Table(title, ["latency ms", *columns], rows, footnotes, notes)


def steady_method(estimates: Estimates) -> str:
    methods = {e.method for e in estimates.values()}
    parts = []
    if METHOD_REPEATS in methods:
        parts.append("where a cell has several successful repeats, the mean over the "
                     "repeats with a Student t interval from them (n - 1 degrees of "
                     "freedom)")
    if METHOD_BATCHES in methods:
        parts.append("where a cell has one successful repeat, its own batch-means interval "
                     "over its steady window (the window starts where MSER-5 finds the end "
                     "of the warm-up; batches are doubled until their means pass a lag-1 "
                     "autocorrelation test, Student t on the batches; bench/steady.py)")
    if METHOD_NONE in methods:
        parts.append("cells without an interval show the mean alone")
    if not parts:
        return "No cell has a steady sRPS."
    return "95% confidence intervals: " + "; ".join(parts) + "."


def comparison_table(verdicts: list[Verdict]) -> Table:
    rows = []
    for verdict in verdicts:
        for check in verdict.checks:
            agrees = {True: "yes", False: "no", None: "n/a"}[check.agrees]
            rows.append([TableCell(str(check.conclusion)), TableCell(check.what),
                         TableCell(check.expected), TableCell(check.study_metric),
                         TableCell(check.study, True), TableCell(check.run_study_metric, True),
                         TableCell(check.run_steady, True),
                         TableCell(agrees, state="" if check.agrees is not False else "failed"),
                         TableCell(check.note)])
    return Table("Study comparison: ratios, this run beside the study",
                 ["#", "ratio", "expected", "study metric", "study", "run (study metric)",
                  "run (steady sRPS)", "agrees", "note"], rows, [],
                 ["Agreement is judged on steady sRPS where the run has it, else on the "
                  "study's metric. A sweep's first column with a study label stands for "
                  "that setup."])
