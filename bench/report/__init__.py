"""The report of a results folder: report.md, a self-contained report.html, figures/; and
the comparison of two (compare.md, compare.html).

    from bench.report import build_report
    paths = build_report(Path("results/2026-11-24T22-30-00"))

Works on a partial or failed run: planned cells without cell.json show as "missing",
failed or interrupted cells show their reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report.compare import RunComparison
    from bench.report.compare_content import CompareReport
    from bench.report.data import Run

__all__ = ["ReportError", "build_report", "read_run", "write_comparison"]


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


def write_comparison(base_dir: Path, new_dir: Path, min_change: float = 0.0,
                     out_dir: Path | None = None, pairs: list[tuple[str, str]] | None = None,
                     ) -> tuple[RunComparison, CompareReport, list[Path]]:
    """Compare two results folders; write compare.md, compare.html and
    figures/compare_ratios.png into `out_dir` (default: `new_dir`)."""
    from bench.report.compare import compare_runs
    from bench.report.compare_content import build_compare
    from bench.report.render import render_compare_html, render_compare_markdown
    from bench.results import write_text_atomic

    comparison = compare_runs(read_run(base_dir), read_run(new_dir), min_change, pairs)
    out_dir = Path(new_dir if out_dir is None else out_dir)
    report = build_compare(comparison, out_dir / "figures")
    markdown, html = out_dir / "compare.md", out_dir / "compare.html"
    write_text_atomic(markdown, render_compare_markdown(report))
    write_text_atomic(html, render_compare_html(report))
    return comparison, report, [markdown, html, *report.files]


def read_run(results_dir: Path) -> Run:
    """The run in `results_dir`; a ReportError (one line) when it is not a readable run."""
    from bench.report.data import ResultsError, load_run

    try:
        return load_run(Path(results_dir))
    except ResultsError as exc:
        raise ReportError(str(exc)) from None
