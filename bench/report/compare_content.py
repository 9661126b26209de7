"""What `bench compare` says, as plain data (tables, sentences, one figure) for compare.md,
compare.html and the terminal; the numbers come from `compare.py`.

Every string is plain text: compare.html escapes it (autoescape), compare.md escapes
Markdown's markup characters, the terminal prints it as rich Text (no markup read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.report import plots
from bench.report.compare import (
    ALPHA,
    FASTER,
    NO_TEST,
    NOT_SIGNIFICANT,
    SLOWER,
    WELCH_METHOD,
    CellChange,
    InteractionChange,
    RunComparison,
)
from bench.report.content import Figure
from bench.report.interaction import INTERACTION_METHOD
from bench.report.tables import Table, TableCell, number, steady_text

FIGURE_NAME = "compare_ratios"


@dataclass
class CompareReport:
    title: str
    summary: list[str]
    warnings: list[str]
    metadata_table: Table
    metadata_brief: Table  # what differs, for the terminal
    cells_table: Table
    unmatched: list[str]
    figure: Figure | None
    interaction_table: Table | None
    interaction_notes: list[str]
    interaction_method: str
    verdicts_table: Table
    method: str
    files: list[Path] = field(default_factory=list)


def _run_id(comparison: RunComparison, side: str) -> str:
    run = comparison.base if side == "BASE" else comparison.new
    return str(run.info.get("run_id", run.folder.name))


def ratio_text(change: CellChange) -> str:
    if change.ratio is None:
        return "n/a"
    interval = change.ratio_ci
    text = f"{change.ratio:.2f}"
    return text if interval is None else f"{text} ({interval[0]:.2f} to {interval[1]:.2f})"


def p_text(change: CellChange) -> str:
    if change.test is None:
        return "n/a"
    p_value = change.test.p_value
    return "<0.001" if p_value < 0.001 else f"{p_value:.2g}"


def cells_table(comparison: RunComparison) -> Table:
    rows = []
    for change in comparison.cells:
        state = change.verdict if change.verdict in (FASTER, SLOWER) else ""
        rows.append([
            TableCell(change.column), TableCell(f"{change.route}/"),
            TableCell(str(change.latency_ms), True),
            TableCell("n/a" if change.base is None else steady_text(change.base), True),
            TableCell("n/a" if change.new is None else steady_text(change.new), True),
            TableCell(ratio_text(change), True), TableCell(p_text(change), True),
            TableCell(number(change.base_p99_ms, 0), True),
            TableCell(number(change.new_p99_ms, 0), True),
            TableCell(change.verdict, state=state), TableCell(change.note)])
    return Table(
        f"Steady sRPS, BASE {_run_id(comparison, 'BASE')} and NEW "
        f"{_run_id(comparison, 'NEW')}, per matched cell",
        ["column", "route", "ms", "BASE sRPS ± 95% CI", "NEW sRPS ± 95% CI",
         "NEW/BASE (95% CI)", "p", "BASE p99 ms", "NEW p99 ms", "verdict", "note"], rows, [],
        ["p99: the mean over successful repeats of each cell's 99th-percentile response "
         "time; shown, not tested (cells record no interval for it)."])


TERMINAL_METADATA = ("run", "git commit", "latency backend")


def metadata_table(comparison: RunComparison, brief: bool = False) -> Table:
    """The runs' metadata side by side; `brief`: only what differs, and the lines that
    say which runs these are (the terminal's version)."""
    shown = [row for row in comparison.metadata
             if not brief or row.differs or row.key in TERMINAL_METADATA]
    rows = [[TableCell(row.key), TableCell(row.base), TableCell(row.new),
             TableCell("≠" if row.differs else "", state="differs" if row.differs else "")]
            for row in shown]
    hidden = len(comparison.metadata) - len(shown)
    notes = [f"{hidden} more lines, the same in both runs, are in compare.md."] if hidden else []
    return Table("The two runs", ["", "BASE", "NEW", "differs"], rows, [], notes)


def _interaction_text(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" + ("" if ci is None else f" ({ci[0]:.2f} to {ci[1]:.2f})")


def interaction_table(changes: list[InteractionChange]) -> Table | None:
    if not changes:
        return None
    rows = []
    for change in changes:
        moved = {True: "yes", False: "no", None: "n/a"}[change.changed]
        rows.append([
            TableCell(f"{change.io_route}/"),
            TableCell(_interaction_text(change.base.value if change.base else None,
                                        change.base.ci if change.base else None), True),
            TableCell(_interaction_text(change.new.value if change.new else None,
                                        change.new.ci if change.new else None), True),
            TableCell(_interaction_text(change.difference, change.ci), True),
            TableCell(moved, state="differs" if change.changed else ""),
            TableCell(change.note)])
    return Table("Three-way interaction on log steady sRPS (95% CI)",
                 ["I/O route", "BASE", "NEW", "NEW - BASE", "changed", "note"], rows, [],
                 ["NEW - BASE: its interval is normal, from the two runs' delta-method "
                  "standard errors (independent runs); changed: the interval excludes 0."])


def verdicts_table(comparison: RunComparison) -> Table:
    rows = [[TableCell(str(v.number)), TableCell(v.short), TableCell(v.base_held),
             TableCell(v.new_held, state="differs" if v.new_held != v.base_held else ""),
             TableCell("; ".join(v.changed_checks) or "none")]
            for v in comparison.verdicts]
    return Table("The study's conclusions, as each run's report states them",
                 ["#", "conclusion", "BASE", "NEW", "checks whose answer moved"], rows)


def summary(comparison: RunComparison) -> list[str]:
    cells = comparison.cells
    counts = ", ".join(f"{comparison.count(v)} {v}" for v in (FASTER, SLOWER, NOT_SIGNIFICANT,
                                                              NO_TEST))
    lines = [f"{len(cells)} matched cells: {counts} (Welch's t-test at 95%, --min-change "
             f"{comparison.min_change:.0%})."]
    tested = len(cells) - comparison.count(NO_TEST)
    if tested:
        lines.append(f"By chance alone about {ALPHA * tested:.1f} of the {tested} tested cells "
                     "would be significant if nothing had changed.")
    for found, word in ((SLOWER, "Slower"), (FASTER, "Faster")):
        named = [f"{c.label} ({c.ratio:.2f}x)" if c.ratio is not None else c.label
                 for c in cells if c.verdict == found]
        if named:
            lines.append(f"{word}: " + ", ".join(named) + ".")
    return lines


def unmatched(comparison: RunComparison) -> list[str]:
    lines = []
    for side, columns in (("BASE", comparison.base_only_columns),
                          ("NEW", comparison.new_only_columns)):
        if columns:
            lines.append(f"Columns only in {side}: {', '.join(columns)}.")
    for side, labels in (("BASE", comparison.base_only_cells),
                         ("NEW", comparison.new_only_cells)):
        if labels:
            lines.append(f"Cells only in {side} (of columns both have): {', '.join(labels)}.")
    return lines


def build_compare(comparison: RunComparison, figures_dir: Path) -> CompareReport:
    bars = []
    for change in comparison.cells:
        interval = change.ratio_ci
        if change.ratio is not None:
            bars.append(plots.RatioBar(change.label, change.ratio,
                                       None if interval is None else interval[0],
                                       None if interval is None else interval[1],
                                       change.verdict))
    figure = None
    files: list[Path] = []
    if bars:
        files = plots.ratio_figure(bars, comparison.min_change, figures_dir, FIGURE_NAME)
        figure = Figure(FIGURE_NAME, files[0],
                        "NEW / BASE steady sRPS per matched cell with its 95% interval, "
                        "sorted")
    return CompareReport(
        title=f"Asynchronize-Django: {_run_id(comparison, 'NEW')} against "
              f"{_run_id(comparison, 'BASE')}",
        summary=summary(comparison), warnings=comparison.warnings,
        metadata_table=metadata_table(comparison),
        metadata_brief=metadata_table(comparison, brief=True),
        cells_table=cells_table(comparison),
        unmatched=unmatched(comparison), figure=figure,
        interaction_table=interaction_table(comparison.interactions),
        interaction_notes=comparison.interaction_notes,
        interaction_method=INTERACTION_METHOD, verdicts_table=verdicts_table(comparison),
        method=WELCH_METHOD, files=files)
