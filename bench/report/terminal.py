"""A comparison on the terminal, with rich: the same tables and sentences as compare.md.

Every string goes in as rich `Text`, never as markup, so a "[1]" or a "[bold]" read from a
results folder prints as written.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from bench.report.compare_content import CompareReport
from bench.report.tables import Table

SHORT_TEXT = 24  # characters: a column whose every value is this short never wraps
STYLES = {"faster": "bold green", "slower": "bold red", "differs": "yellow",
          "failed": "red", "missing": "dim", "wide": "yellow"}


def rich_table(table: Table) -> RichTable:
    out = RichTable(title=Text(table.title, style="bold"), box=box.SIMPLE_HEAD,
                    title_justify="left")
    for index, (header, numeric) in enumerate(zip(table.header, table.numeric, strict=True)):
        # Numbers and short words (names, verdicts) never wrap; long text does.
        widest = max((len(row[index].text) for row in table.rows if index < len(row)),
                     default=0)
        out.add_column(Text(header), justify="right" if numeric else "left",
                       no_wrap=numeric or widest <= SHORT_TEXT)
    for row in table.rows:
        out.add_row(*(Text(cell.text, style=STYLES.get(cell.state, "")) for cell in row))
    return out


def _notes(console: Console, table: Table) -> None:
    for index, note in enumerate(table.footnotes, 1):
        console.print(Text(f"[{index}] {note}", style="dim"))
    for note in table.notes:
        console.print(Text(note, style="dim"))


def print_compare(report: CompareReport, console: Console) -> None:
    console.print(Text(report.title, style="bold"))
    for warning in report.warnings:
        console.print(Text(f"warning: {warning}", style="bold yellow"))
    for table in (report.metadata_brief, report.cells_table):
        console.print(rich_table(table))
        _notes(console, table)
    console.print(Text(f"Test: {report.method}", style="dim"))
    if report.interaction_table:
        console.print(rich_table(report.interaction_table))
        _notes(console, report.interaction_table)
    for note in report.interaction_notes:
        console.print(Text(note))
    console.print(rich_table(report.verdicts_table))
    for line in [*report.unmatched, *report.summary]:
        console.print(Text(line))
