"""The report of a results folder: report.md, a self-contained report.html, figures/.

    from bench.report import build_report
    paths = build_report(Path("results/2026-11-24T22-30-00"))

Works on a partial or failed run: planned cells without cell.json show as "missing",
failed or interrupted cells show their reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report.data import Run

__all__ = ["ReportError", "build_report", "read_run"]


class ReportError(Exception):
    """A folder the report cannot be built from; one line for the user."""


def build_report(results_dir: Path) -> list[Path]:
    """Write report.md, report.html and figures/ into `results_dir`; return their paths."""
    # Imported here: matplotlib and scipy are slow to import, and the CLI imports this
    # package for ReportError alone.
    from bench.report.content import build_content
    from bench.report.render import render_html, render_markdown
    from bench.results import write_text_atomic

    results_dir = Path(results_dir)
    run = read_run(results_dir)
    figures_dir = results_dir / "figures"
    report = build_content(run, figures_dir)
    markdown, html = results_dir / "report.md", results_dir / "report.html"
    write_text_atomic(markdown, render_markdown(report))
    write_text_atomic(html, render_html(report))
    return [markdown, html, *report.files]


def read_run(results_dir: Path) -> Run:
    """The run in `results_dir`; a ReportError (one line) when it is not a readable run."""
    from bench.report.data import ResultsError, load_run

    try:
        return load_run(Path(results_dir))
    except ResultsError as exc:
        raise ReportError(str(exc)) from None
