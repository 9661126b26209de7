"""python -m bench table: README's results table from a hand-made results folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import make_results  # the hand-made folder the report's tests read

from bench.report import ReportError
from bench.report.results_table import results_table_of_folder


def test_the_table_of_io_create_with_its_run_and_commit(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "bench", "table", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Run `handmade` (interrupted), commit `0123456789ab` with uncommitted changes; "
        "profile `smoke`, 1 repeat(s), latency backend proxy.",
        "",
        "Steady sRPS on `io_create/` (± 95% CI):",
        "",
        "| variant | 0 ms | 100 ms | DB connections | server + DB MiB |",
        "|---|---:|---:|---:|---:|",
        "| `sync_gunicorn` (study: Sync) | 100.0 ± 5.0 | 2.0 ± 0.1 | 12 | 280 |",
        "| `async_uvicorn` (study: Async Limited) | 90.0 ± 5.0 | failed | 12 | 280 |",
        "| `async_unlimited` (study: Async Unlimited) | 120.0 ± 10.0 | 110.0 ± 10.0 | 12 | 280 |",
        "",
        "(Connections and memory: the peak over all latencies and repeats; memory is "
        "proportional set size.)",
    ]


def test_a_wide_interval_is_flagged_and_explained(tmp_path: Path) -> None:
    table = results_table_of_folder(make_results(tmp_path / "run"), "cpu")
    assert "| `async_unlimited` (study: Async Unlimited) | 8.0 ± 0.5 | 8.0 ± 2.0 † |" in table
    assert "| `async_uvicorn` (study: Async Limited) | 5.0 ± 0.2 | missing |" in table
    assert table.endswith("(† 95% CI wider than 20% of the mean.)\n")


def test_peaks_are_the_largest_over_latencies(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    cell = folder / "cells" / "sync_gunicorn__io_create__100ms__r1" / "cell.json"
    data = json.loads(cell.read_text())
    data["metrics"].update(peak_db_connections=31, peak_server_db_rss_mib=401.4)
    cell.write_text(json.dumps(data))
    table = results_table_of_folder(folder, "io_create")
    assert "| 2.0 ± 0.1 | 31 | 401 |" in table


def test_a_route_the_run_lacks_is_one_line(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    with pytest.raises(ReportError, match=r"has no io_read/ cells; it has cpu/, io_create/"):
        results_table_of_folder(folder, "io_read")
    result = subprocess.run([sys.executable, "-m", "bench", "table", str(folder), "--route",
                             "io_read"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "has no io_read/ cells" in result.stderr
