"""README's results table from a results folder: steady sRPS ± 95% CI at each latency on one
route, with peak PostgreSQL connections and peak server + PostgreSQL memory per column, under
a line naming the run and the commit it ran, so a quoted number can be traced to its run.

    python -m bench table results/2026-11-24T22-30-00 --route io_create
"""

from __future__ import annotations

from pathlib import Path

from bench.report import ReportError, read_run
from bench.report.data import Run
from bench.report.resources import resource_values
from bench.report.stats import WIDE_CI_FRACTION, ok_cells, steady_estimate
from bench.report.study import ROUTE_TITLES
from bench.report.tables import UNSTEADY_MARK, WIDE_MARK, number, steady_text


def _provenance(run: Run) -> str:
    info = run.info
    commit = info.get("git_commit")
    commit_text = "commit unknown" if not commit else (
        f"commit `{str(commit)[:12]}`" + (" with uncommitted changes" if info.get("git_dirty")
                                          else ""))
    profile = info.get("profile") or {}
    profile_name = profile.get("name", "?") if isinstance(profile, dict) else "?"
    config = info.get("config") or {}
    return (f"Run `{info.get('run_id', run.folder.name)}` ({info.get('status', '?')}), "
            f"{commit_text}; profile `{profile_name}`, {config.get('repeats', '?')} "
            f"repeat(s), latency backend {info.get('latency_backend', '?')}.")


def _steady_cell(run: Run, column: str, route: str, latency_ms: int) -> str:
    cells = run.group(column, route, latency_ms)
    if not cells:
        return "not planned"
    good = ok_cells(cells)
    if not good:
        broken = [c.status for c in cells if c.status != "missing"]
        return broken[0] if broken else "missing"
    estimate = steady_estimate(cells)
    text = "n/a" if estimate is None else steady_text(estimate)
    return text if len(good) == len(cells) else f"{text} ({len(good)} of {len(cells)} repeats)"


def results_table(run: Run, route: str) -> str:
    """The table as Markdown, with its provenance line above and its notes below."""
    peaks = resource_values(run)
    header = ["variant", *[f"{ms} ms" for ms in run.latencies], "DB connections",
              "server + DB MiB"]
    lines = [_provenance(run), "",
             f"Steady sRPS on `{ROUTE_TITLES.get(route, route + '/')}` (± 95% CI):", "",
             "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    any_wide = any_unsteady = False
    for column in run.columns:
        label = f"`{column.name}`" + (f" (study: {column.study_label})"
                                      if column.study_label else "")
        steady = [_steady_cell(run, column.name, route, ms) for ms in run.latencies]
        any_wide = any_wide or any(WIDE_MARK in text for text in steady)
        any_unsteady = any_unsteady or any(UNSTEADY_MARK in text for text in steady)
        peak = peaks.get((column.name, route), {})
        lines.append("| " + " | ".join([
            label, *steady, number(peak.get("peak_db_connections"), 0),
            number(peak.get("peak_server_db_rss_mib"), 0)]) + " |")
    lines += ["", "(Connections and memory: the peak over all latencies and repeats; memory is "
              "proportional set size.)"]
    if any_wide:
        lines.append(f"({WIDE_MARK} 95% CI wider than {WIDE_CI_FRACTION:.0%} of the mean.)")
    if any_unsteady:
        lines.append(f"({UNSTEADY_MARK} unsteady: the throughput still drifted at the end of "
                     "the hold.)")
    return "\n".join(lines) + "\n"


def results_table_of_folder(results_dir: Path, route: str) -> str:
    """results_table() of a results folder; ReportError (one line) when it cannot be made."""
    run = read_run(results_dir)
    if route not in run.routes:
        raise ReportError(f"{results_dir} has no {route}/ cells; it has "
                          f"{', '.join(r + '/' for r in run.routes) or 'none'}")
    return results_table(run, route)
