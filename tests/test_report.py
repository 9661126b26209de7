"""The report step: tables, flags and escaping on a hand-made results folder; the statistics
against hand computations; report.html in headless Chromium; a report from a real run."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import ReportError, build_report
from bench.report.data import CellRecord
from bench.report.stats import (
    Estimate,
    calibration_sentence,
    ci_too_wide,
    interaction,
    pooled_slope,
    repeat_pairs,
    steady_estimate,
    t_interval,
)

# One xdist worker builds the hand-made report (the module fixture) once.
pytestmark = pytest.mark.xdist_group("report")

CHROMIUM = Path("/usr/bin/chromium")
XSS = "<script>alert(1)</script>"
PROFILE = {"name": "smoke", "users": 150, "spawn_rate": 150, "min_hold_s": 8,
           "max_hold_s": 8, "precision": 0, "timeout_s": 30}
COLUMNS = {  # column: (interface, study_label)
    "sync_gunicorn": ("wsgi", "Sync"),
    "async_uvicorn": ("asgi", "Async Limited"),
    "async_unlimited": ("asgi", "Async Unlimited"),
}
# (column, route, latency): (steady sRPS, its 95% CI, max sRPS, total successes)
CELLS: dict[tuple[str, str, int], tuple[float, list[float], float, int]] = {
    ("sync_gunicorn", "cpu", 0): (10.0, [9.5, 10.5], 12.5, 100),
    ("sync_gunicorn", "cpu", 100): (10.0, [9.5, 10.5], 12.0, 98),
    ("sync_gunicorn", "io_create", 0): (100.0, [95.0, 105.0], 104.5, 1000),
    ("sync_gunicorn", "io_create", 100): (2.0, [1.85, 2.15], 3.0, 20),
    ("async_uvicorn", "cpu", 0): (5.0, [4.8, 5.2], 6.0, 50),
    ("async_uvicorn", "io_create", 0): (90.0, [85.0, 95.0], 97.0, 900),
    ("async_unlimited", "cpu", 0): (8.0, [7.5, 8.5], 9.0, 80),
    ("async_unlimited", "cpu", 100): (8.0, [6.0, 10.0], 9.5, 79),  # CI 50% of the mean
    ("async_unlimited", "io_create", 0): (120.0, [110.0, 130.0], 131.0, 1200),
    ("async_unlimited", "io_create", 100): (110.0, [100.0, 120.0], 118.0, 1100),
}
FAILED = "async_uvicorn__io_create__100ms__r1"
MISSING = "async_uvicorn__cpu__100ms__r1"


def cell_id(column: str, route: str, latency: int) -> str:
    return f"{column}__{route}__{latency}ms__r1"


def write_cell_files(folder: Path, steady: float, failures: int) -> None:
    """stats_history.csv, responses.csv and resources.csv of a 10 s smoke cell."""
    history = ['"Timestamp","User Count","Type","Name","Requests/s","Failures/s","50%","66%",'
               '"75%","80%","90%","95%","98%","99%","99.9%","99.99%","100%",'
               '"Total Request Count","Total Failure Count"']
    for second in range(11):
        users = min(150, 50 * second)
        rps = steady * min(1.0, second / 3) + failures / 10
        history.append(f'{1700000000 + second},{users},,Aggregated,{rps:.2f},'
                       f'{failures / 10:.2f},{20 + second},22,24,26,30,{40 + 2 * second},'
                       f'50,60,70,80,90,{int(rps * second)},{failures * second // 10}')
        history.append(f'{1700000000 + second},{users},POST,/io_create/,{rps:.2f},0,20,22,'
                       '24,26,30,40,50,60,70,80,90,0,0')
    (folder / "stats_history.csv").write_text("\n".join(history) + "\n")
    rows = ["t_s,name,response_time_ms,ok,kind"]
    for i in range(int(steady * 10)):
        rows.append(f"{i / steady:.3f},/io_create/,{15 + i % 20},1,")
    rows += [f"{5 + i * 0.01:.3f},/io_create/,3,0,HTTP 503 too_many_clients"
             for i in range(failures)]
    (folder / "responses.csv").write_text("\n".join(rows) + "\n")
    resources = ["t_s,server_rss_mib,server_cpu_pct,server_threads,db_connections,db_rss_mib,"
                 "locust_cpu_pct"]
    resources += [f"{t},{60 + t},{90},{4 + t},{2 + t},{200 + t},{50}" for t in range(11)]
    (folder / "resources.csv").write_text("\n".join(resources) + "\n")


def cell_json(column: str, route: str, latency: int, **extra: Any) -> dict[str, Any]:
    interface, label = COLUMNS[column]
    return {"format": 1, "cell_id": cell_id(column, route, latency), "column": column,
            "variant": column, "title": column, "study_label": label, "interface": interface,
            "views": "sync" if interface == "wsgi" else "async", "route": route,
            "latency_ms": latency, "repeat": 1,
            "settings": {"pg_max_connections": 100, "conn_max_age": 0, "pool": None},
            "status": "ok", "reason": None, "latency_backend": "proxy", **extra}


def metrics(steady: float, ci: list[float], max_srps: float, successes: int,
            failures: dict[str, int]) -> dict[str, Any]:
    failed = sum(failures.values())
    return {"max_srps": max_srps, "total_requests": successes + failed,
            "total_failures": failed, "total_successes": successes, "steady_srps": steady,
            "steady_srps_ci95": ci, "ci_method": "batch_means", "hold_s": 7.0,
            "p50_ms": 20.0, "p95_ms": 40.0, "p99_ms": 60.0, "failures_by_kind": failures,
            "peak_server_rss_mib": 70.0, "mean_server_cpu_pct": 90.0,
            "peak_server_threads": 14, "peak_db_connections": 12, "peak_db_rss_mib": 210.0,
            "peak_server_db_rss_mib": 280.0, "mean_locust_cpu_pct": 50.0,
            "peak_locust_cpu_pct": 50.0, "load_generator_saturated": False,
            "hold_users": 150, "rss_per_in_flight_kib": 812.0}


def make_results(folder: Path) -> Path:
    """A partial run: 10 ok cells (one with a too-wide CI, one with a saturated load
    generator), one failed cell whose reason is markup, one planned cell never run."""
    planned = [cell_id(c, r, lat) for c in COLUMNS for r in ("cpu", "io_create")
               for lat in (0, 100)]
    run = {
        "format": 1, "run_id": "handmade", "started_at": "2026-01-02T10:00:00+00:00",
        "ended_at": "2026-01-02T10:05:00+00:00", "status": "interrupted",
        "config": {"variants": list(COLUMNS), "routes": ["cpu", "io_create"],
                   "latencies_ms": [0, 100], "profile": "smoke", "repeats": 1},
        "profile": PROFILE, "latency_backend": "proxy",
        "latency_backend_reason": "netem unavailable: kernel has no sch_netem",
        "machine": {"cores": 2, "cpu_model": "Test CPU 3000", "memory_gib": 23.4,
                    "kernel": "6.1", "python": "3.11.2"},
        "packages": {"django": "5.2.1", "locust": "2.31.0"}, "postgres_version": "16.2",
        "git_commit": "0123456789abcdef", "git_dirty": True,
        "placement": {"server_cpus": [1], "other_cpus": [0]},
        "caveats": ["2 cores: the server has 1 core(s)"], "cells": planned,
    }
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(run))
    for (column, route, latency), (steady, ci, peak, successes) in CELLS.items():
        cell_dir = folder / "cells" / cell_id(column, route, latency)
        cell_dir.mkdir(parents=True)
        failures = {"HTTP 503 too_many_clients": 7} if column == "async_uvicorn" else {}
        write_cell_files(cell_dir, steady, sum(failures.values()))
        data = cell_json(column, route, latency,
                         metrics=metrics(steady, ci, peak, successes, failures))
        if (column, route, latency) == ("sync_gunicorn", "cpu", 100):
            data["metrics"]["load_generator_saturated"] = True
        (cell_dir / "cell.json").write_text(json.dumps(data))
    failed_dir = folder / "cells" / FAILED
    failed_dir.mkdir(parents=True)
    (failed_dir / "cell.json").write_text(json.dumps(cell_json(
        "async_uvicorn", "io_create", 100, status="failed",
        reason=f"VerificationError: io_create/ answered {XSS}", metrics={})))
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = make_results(tmp_path_factory.mktemp("report") / "run")
    return folder, build_report(folder)


def stated_interactions(md: str) -> list[float]:
    """The three-way interaction values "## The interaction" states, one per I/O route
    estimated; none where it says why it cannot estimate one."""
    start = md.index("## The interaction")
    end = md.find("\n## ", start + 1)
    return [float(v) for v in re.findall(
        r"the three-way interaction on log steady sRPS is (-?\d+\.\d+) \(",
        md[start:end if end > 0 else None])]


def section(text: str, title: str) -> str:
    """The text of one Markdown table from its bold title to the next blank+bold line."""
    start = text.index(title)
    end = text.find("\n**", start + len(title))
    return text[start:end if end > 0 else None]


def test_report_writes_markdown_html_and_figures(report: tuple[Path, list[Path]]) -> None:
    folder, paths = report
    names = {p.relative_to(folder).as_posix() for p in paths}
    assert {"report.md", "report.html", "figures/interaction.png", "figures/interaction.svg",
            "figures/resources.png", "figures/resources.svg"} <= names
    for path in paths:
        assert path.is_file() and path.stat().st_size > 500, path
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        if path.suffix == ".svg":
            assert "<svg" in path.read_text()[:2000], path
    time_series = [n for n in names if n.startswith("figures/ts_")]
    assert len(time_series) == len(CELLS), time_series  # every cell with a history


def test_study_table_shows_max_srps_successes_missing_and_failed(
        report: tuple[Path, list[Path]]) -> None:
    md = (report[0] / "report.md").read_text()
    table = section(md, "Table 3, io_create/: max sRPS & total successes")
    assert "| latency ms | sync_gunicorn | async_uvicorn | async_unlimited |" in table
    assert "| 0 | 104.5 & 1,000 | 97.0 & 900 | 131.0 & 1,200 |" in table
    assert "| 100 | 3.0 & 20 | failed \\[1\\] | 118.0 & 1,100 |" in table
    assert f"[1] {FAILED}: failed: VerificationError" in table
    cpu = section(md, "Table 1, cpu/: max sRPS & total successes")
    assert "| 100 | 12.0 & 98 | missing | 9.5 & 79 |" in cpu


def test_steady_table_shows_ci_and_flags_wide_intervals(
        report: tuple[Path, list[Path]]) -> None:
    md = (report[0] / "report.md").read_text()
    cpu = section(md, "Table 1, cpu/: steady sRPS ± 95% CI")
    assert "| 0 | 10.0 ± 0.5 | 5.0 ± 0.2 | 8.0 ± 0.5 |" in cpu
    assert "| 100 | 10.0 ± 0.5 | missing | 8.0 ± 2.0 † |" in cpu  # 4 wide on a mean of 8
    assert "† 95% CI wider than 20% of the mean" in cpu
    io = section(md, "Table 3, io_create/: steady sRPS ± 95% CI")
    assert "†" not in io
    assert "batch-means interval" in md


def test_html_escapes_strings_from_files(report: tuple[Path, list[Path]]) -> None:
    html = (report[0] / "report.html").read_text()
    md = (report[0] / "report.md").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS not in html
    assert XSS not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_html_is_self_contained(report: tuple[Path, list[Path]]) -> None:
    html = (report[0] / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", html)
    assert len(sources) == len(CELLS) + 4  # + interaction, resources, 2 routes' choices
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<(link|script)[^>]*\b(src|href)=", html)
    assert "url(" not in html and "@import" not in html
    assert "<details>" in html


def test_caveats_interaction_and_study_comparison(report: tuple[Path, list[Path]]) -> None:
    md = (report[0] / "report.md").read_text()
    assert "2 cores: the server has 1 core(s)" in md  # run.json's own caveat
    assert "Test CPU 3000" in md and "netem unavailable" in md
    assert "saturated, so these cells may understate the server: " \
           "sync_gunicorn__cpu__100ms__r1" in md
    assert "1 cell(s) missing: " + MISSING in md
    assert "CI wider than 20% of the mean in 1 cell(s): async_unlimited cpu/ 100 ms" in md
    expected = (math.log(2 / 100) - math.log(110 / 120)) - 0.0
    assert stated_interactions(md) == [pytest.approx(expected, abs=0.005)]
    assert "cannot be estimated" not in md
    assert "divides sync io_create/ throughput by 50 (sync_gunicorn)" in md
    # 2 async_uvicorn cells with 7 each; the failed one has no metrics, one is missing.
    assert ('| 3 | Async Limited: failures "too many clients" | present | failures | present '
            '| 14 in async_uvicorn | n/a | yes |') in md
    assert "Study conclusion 3 (Async Limited: too many clients): holds." in md


def test_an_interaction_that_cannot_be_estimated_says_why_and_states_no_value(
        tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    (folder / "cells" / cell_id("sync_gunicorn", "cpu", 100) / "cell.json").unlink()
    build_report(folder)
    md = (folder / "report.md").read_text()
    assert ("The three-way interaction for io_create/ cannot be estimated: it needs a "
            "successful sync_gunicorn cpu/ cell at 100 ms") in md
    assert stated_interactions(md) == []


def test_failures_and_resources_tables(report: tuple[Path, list[Path]]) -> None:
    md = (report[0] / "report.md").read_text()
    failures = section(md, "Failed requests by kind, per cell")
    assert "| cell | status | HTTP 503 too_many_clients | all requests |" in failures
    assert "| async_uvicorn__cpu__0ms__r1 | ok | 7 | 57 |" in failures
    resources = section(md, "Resources per column and route")
    assert "| sync_gunicorn | cpu/ | 70.0 | 280.0 | 14 | 12 | 812 |" in resources


def test_not_a_results_folder_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a results folder"):
        build_report(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(ReportError, match="not valid JSON"):
        build_report(tmp_path)


# -- statistics ----------------------------------------------------------------------------

T_975_DF1 = 12.706204736174696
T_975_DF2 = 4.302652729911275  # Student t quantile, 97.5%, 2 degrees of freedom (tables)
T_975_DF4 = 2.7764451051977987
Z_975 = 1.959963984540054


def ok_cell(steady: float, ci: list[float] | None = None, repeat: int = 1) -> CellRecord:
    return CellRecord(cell_id=f"c__io_read__0ms__r{repeat}", column="c", variant="c",
                      route="io_read", latency_ms=0, repeat=repeat, status="ok",
                      metrics={"steady_srps": steady, "steady_srps_ci95": ci})


def test_repeat_pairs_and_the_calibration_line_with_the_machines_drift() -> None:
    # Intervals of +-2 from 5 batches (df 4): se = 2 / t(4) in each cell.
    cells = [ok_cell(v, [v - 2, v + 2], repeat=r) for r, v in ((1, 100.0), (2, 101.0),
                                                                (3, 80.0))]
    se = 2 / T_975_DF4
    pairs = repeat_pairs(cells)
    assert [(p.repeats, p.z) for p in pairs] == [
        ((1, 2), pytest.approx(1 / math.hypot(se, se))),
        ((1, 3), pytest.approx(20 / math.hypot(se, se))),
        ((2, 3), pytest.approx(21 / math.hypot(se, se)))]
    line = calibration_sentence(pairs)
    assert line is not None and line.startswith(
        "Calibration: of 3 pairs of repeats of the same cell, 2 landed more than 2.5 "
        "combined standard errors apart") and "understate" in line
    assert "CPU loop" not in line  # no machine_loop_ms in these records
    close = [ok_cell(v, [v - 2, v + 2], repeat=r) for r, v in ((1, 100.0), (2, 101.0))]
    for cell, loop in zip(close, (80.0, 88.0), strict=True):
        cell.machine_loop_ms = loop
    assert (calibration_sentence(repeat_pairs(close)) or "").endswith(
        "differed between the two repeats by a median of 10%, up to 10%.")
    # The CPU loop before each cell: 80, 88 and 100 ms. Changes 10%, 25%, 13.6%.
    for cell, loop in zip(cells, (80.0, 88.0, 100.0), strict=True):
        cell.machine_loop_ms = loop
    line = calibration_sentence(repeat_pairs(cells)) or ""
    assert ("differed between the two repeats by a median of 14% (19% in the pairs beyond "
            "2.5), up to 25%") in line, line


def test_repeats_compared_at_the_same_machine_speed() -> None:
    """Two repeats 20 sRPS apart, the second on a machine slower by 1 ms of probe, where
    each cell lost 20 sRPS per ms: far apart as measured, together at the same speed."""
    cells = [ok_cell(v, [v - 2, v + 2], repeat=r) for r, v in ((1, 100.0), (2, 80.0))]
    for cell, probe in zip(cells, (3.0, 4.0), strict=True):
        cell.metrics.update(machine_probe_ms=probe, speed_slope=-20.0, speed_slope_se=1.0)
    se = 2 / T_975_DF4
    (pair,) = repeat_pairs(cells)
    assert pair.z == pytest.approx(20 / math.hypot(se, se))
    # the pooled slope's se is 1/sqrt(2); one ms of shift carries it into the combined se
    assert pair.speed_z == pytest.approx(0.0)
    assert pair.machine_change == pytest.approx(1 / 3)
    line = calibration_sentence([pair]) or ""
    assert "1 landed more than 2.5" in line and "a CPU probe ten times a second" in line
    assert "understate" in line  # as measured
    assert line.endswith("Compared at the same machine speed (each cell's slope of "
                         "throughput on the probe, corrected for the probe's noise), 0 of 1 "
                         "pairs landed more than 2.5 apart "
                         "(median z 0.00): the cells' intervals hold for the machine they "
                         "ran on, and its speed moved the repeats apart."), line
    # A slope of -10 explains half of the gap: z of 10 over the combined se.
    for cell in cells:
        cell.metrics["speed_slope"] = -10.0
    (pair,) = repeat_pairs(cells)
    assert pair.speed_z == pytest.approx(10 / math.hypot(se, se, math.sqrt(0.5)))
    assert (calibration_sentence([pair]) or "").endswith("(median z 8.06).")
    # One cell without a probe: no comparison at the same speed.
    del cells[1].metrics["machine_probe_ms"]
    (pair,) = repeat_pairs(cells)
    assert pair.speed_z is None and "same machine speed" not in (
        calibration_sentence([pair]) or "")


def test_the_pooled_slope_is_corrected_for_the_probes_noise() -> None:
    """Throughput falls 20 sRPS per ms of true speed; the probe reads the speed with noise
    twice the speed's own spread (sd 0.6 against 0.3; a 2-s batch's mean of two one-second
    probes then has noise variance 0.18 against the speed's 0.09). Least squares on the
    probe finds about a third of the slope (regression dilution); the pooled slope,
    corrected by the cells' reliability, finds it. Without the cells' speed_sxx the old,
    uncorrected pooling is kept."""
    import numpy as np

    from bench.metrics import SPEED_BATCH_S, speed_metrics

    rng = np.random.default_rng(5)
    batch = int(SPEED_BATCH_S)
    cells = []
    for repeat in range(1, 21):
        speed = rng.normal(3.5, 0.3, 60 // batch)  # a true speed per batch, over 60 s
        times, rows = [], []
        for k, s in enumerate(speed):
            count = rng.poisson((100 - 20 * (s - 3.5)) * batch)
            times.extend(k * batch + rng.uniform(0, batch, count))
            rows.extend({"t_s": k * batch + i + 0.5,
                         "machine_probe_ms": s + rng.normal(0, 0.6)} for i in range(batch))
        cell = ok_cell(100.0, [99.0, 101.0], repeat=repeat)
        cell.metrics.update(speed_metrics(np.sort(np.array(times)), rows, 0.0, 60.0))
        cells.append(cell)
    reliability = [c.metric("speed_reliability") for c in cells]
    assert 0.2 < float(np.median(reliability)) < 0.8, reliability
    corrected, se = pooled_slope(cells) or (0.0, 0.0)
    assert abs(corrected - -20.0) < 3 * se and se < 6, (corrected, se)
    for cell in cells:
        del cell.metrics["speed_sxx"]
    uncorrected, _ = pooled_slope(cells) or (0.0, 0.0)
    assert -12.0 < uncorrected < -3.0, uncorrected  # diluted to about -20 * 0.09 / 0.27


def _proxy_overhead() -> Any:
    """benchmarks/proxy_overhead.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "proxy_overhead.py"
    spec = importlib.util.spec_from_file_location("proxy_overhead", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_proxy_overhead_compares_at_one_machine_speed() -> None:
    """benchmarks/proxy_overhead.py --end-to-end: a proxy cell on a machine 1 ms of probe
    faster than its none cell, where the cells lose 20 sRPS per ms, is 100 vs 80 as
    measured and 90 vs 90 at their mean speed."""
    module = _proxy_overhead()
    cells = [ok_cell(v, [v - 2, v + 2], repeat=r) for r, v in ((1, 100.0), (2, 80.0))]
    for cell, probe in zip(cells, (3.0, 4.0), strict=True):
        cell.metrics.update(machine_probe_ms=probe, speed_slope=-20.0, speed_slope_se=1.0,
                            speed_sxx=1.0, speed_reliability=0.5)
    # reliability 0.5 doubles the slope to -40 per ms: half a ms each way swaps them
    assert module.at_one_speed(cells) == pytest.approx([80.0, 100.0])
    for cell in cells:
        cell.metrics["speed_reliability"] = 1.0
    assert module.at_one_speed(cells) == pytest.approx([90.0, 90.0])
    del cells[0].metrics["machine_probe_ms"]
    assert module.at_one_speed(cells) is None
    assert module.verdict_of(0.96, 1.03) == "within 5%"
    assert module.verdict_of(0.80, 0.94) == "apart by more than 5%"
    assert module.verdict_of(0.90, 1.01).startswith("cannot tell")


def test_proxy_overhead_requests_verdict_from_paired_times(
        capsys: pytest.CaptureFixture[str]) -> None:
    """proxy_overhead.py --requests: request times 10% longer through the proxies are apart
    (exit 1), 1% longer within 5% (exit 0); the JSON line carries the ratio and interval."""
    module = _proxy_overhead()
    rng = random.Random(3)
    direct = [12.0 + rng.gauss(0, 0.5) for _ in range(300)]
    for factor, code, verdict in ((1.10, 1, "apart by more than 5%"), (1.01, 0, "within 5%")):
        proxied = [t * factor + rng.gauss(0, 0.2) for t in direct]
        assert module._report_requests({"direct": direct, "proxy": proxied}, 2.0, ["fifo"] * 2,
                                       "v", "io_create") == code
        answer = json.loads(capsys.readouterr().out.splitlines()[-1])
        low, high = answer["ratio_interval95"]
        assert low < factor < high and high - low < 0.03, answer
        assert answer["verdict"] == verdict


def test_ci_from_repeats_is_student_t_on_the_repeats() -> None:
    values = [10.0, 12.0, 14.0]  # mean 12, sd 2
    half = T_975_DF2 * 2 / math.sqrt(3)
    low, high = t_interval(values) or (0, 0)
    assert (low, high) == pytest.approx((12 - half, 12 + half))
    estimate = steady_estimate([ok_cell(v, [0, 1], i) for i, v in enumerate(values, 1)])
    assert estimate is not None
    assert (estimate.mean, estimate.low, estimate.high) == pytest.approx((12, 12 - half,
                                                                           12 + half))
    assert (estimate.n, estimate.df, estimate.method) == (3, 2, "repeats")


def test_one_repeat_keeps_the_cells_batch_means_ci_and_failed_repeats_are_ignored() -> None:
    failed = CellRecord(cell_id="c__io_read__0ms__r2", column="c", variant="c",
                        route="io_read", latency_ms=0, repeat=2, status="failed",
                        metrics={"steady_srps": 999.0})
    estimate = steady_estimate([ok_cell(50.0, [45.0, 55.0]), failed])
    assert estimate is not None
    assert (estimate.mean, estimate.low, estimate.high, estimate.df, estimate.method) == (
        50.0, 45.0, 55.0, 4, "batch means")
    assert steady_estimate([failed]) is None


def test_wide_ci_flag_is_width_over_20_percent_of_the_mean() -> None:
    assert ci_too_wide(10.0, 8.9, 11.1)  # width 2.2 > 2
    assert not ci_too_wide(10.0, 9.1, 10.9)  # width 1.8
    assert not ci_too_wide(10.0, None, None)
    assert ci_too_wide(0.0, 0.0, 0.5)
    assert ci_too_wide(0.0, 0.0, 0.0)  # no success in the window: [0, 0] bounds nothing


def test_the_precision_note_names_every_cell_that_missed_the_target(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    run = json.loads((folder / "run.json").read_text())
    run["profile"] = {**PROFILE, "precision": 0.05}
    (folder / "run.json").write_text(json.dumps(run))
    zero = cell_id("async_uvicorn", "cpu", 0)
    wide = cell_id("async_unlimited", "cpu", 100)
    narrow = cell_id("sync_gunicorn", "cpu", 0)  # 5% of the mean, held to the maximum
    for path in (folder / "cells").glob("*/cell.json"):
        data = json.loads(path.read_text())
        if data["status"] != "ok":
            continue
        metrics = data["metrics"]
        low, high = metrics["steady_srps_ci95"]
        metrics["steady_half_width_pct"] = 100 * (high - low) / 2 / metrics["steady_srps"]
        data["stopped_by"] = "max_hold" if data["cell_id"] in (zero, wide, narrow) \
            else "precision"
        if data["cell_id"] == zero:  # the harness writes Infinity for a window of no success
            # ...and no request ended at all (a busy server whose requests outlast the hold)
            metrics.update(steady_srps=0.0, steady_srps_ci95=[0.0, 0.0],
                           steady_half_width_pct=math.inf, total_requests=0,
                           total_successes=0, total_failures=0)
        path.write_text(json.dumps(data))
    build_report(folder)
    md = (folder / "report.md").read_text()
    note = next(line for line in md.splitlines() if "reached the precision target" in line)
    assert note.startswith("- 7 of 10 cells reached the precision target"), note
    missed = note.split("missed the target: ")[1].split(", ")
    assert sorted(missed) == sorted([zero, wide]), note
    assert "| 0 | 10.0 ± 0.5 | 0.00 ± 0.00 † |" in md  # the zero cell is flagged
    nothing = next(line for line in md.splitlines() if "ended no request" in line)
    assert nothing.startswith("- 1 cell(s) ended no request") and nothing.endswith(zero), nothing


def test_a_machine_whose_speed_moved_is_a_caveat(tmp_path: Path) -> None:
    """Cells' probes 3.0 to 3.6 ms (20% apart) make a note naming the fastest and slowest
    cells; within 10% of each other, no note."""
    folder = make_results(tmp_path / "run")
    paths = sorted((folder / "cells").glob("*/cell.json"))
    ok = [p for p in paths if json.loads(p.read_text())["status"] == "ok"]

    def probes(values: list[float]) -> str:
        for path, value in zip(ok, values, strict=False):
            data = json.loads(path.read_text())
            data["metrics"]["machine_probe_ms"] = value
            path.write_text(json.dumps(data))
        build_report(folder)
        md = (folder / "report.md").read_text()
        return next((line for line in md.splitlines() if "machine's speed moved" in line), "")

    note = probes([3.3, 3.0, 3.6, 3.2])
    fast, slow = (json.loads(ok[i].read_text())["cell_id"] for i in (1, 2))
    assert note == (f"- the machine's speed moved during the run: its CPU probe took 3.00 ms "
                    f"during {fast} and 3.60 ms during {slow} (20% slower); a cell its "
                    "server's own CPU limits can differ by up to that much from the machine "
                    "alone (not cpu/ with a CPU-time budget: its requests cost the same CPU "
                    "whatever the speed)"), note
    assert probes([3.3, 3.1, 3.4, 3.2]) == ""


def test_interaction_equals_hand_computation_with_delta_method_interval() -> None:
    means = {("s", "io_read", 0): 100.0, ("s", "io_read", 200): 2.0,
             ("a", "io_read", 0): 120.0, ("a", "io_read", 200): 100.0,
             ("s", "cpu", 0): 10.0, ("s", "cpu", 200): 9.0,
             ("a", "cpu", 0): 8.0, ("a", "cpu", 200): 6.0}  # every change nonzero
    half_width = 0.1  # every CI: mean +- 10%
    table = {k: Estimate(m, m * (1 - half_width), m * (1 + half_width), 1, 4, "batch means")
             for k, m in means.items()}
    found = interaction(lambda c, r, ms: table.get((c, r, ms)), "s", "a", "io_read", 0, 200,
                        floor=0.01)
    assert not isinstance(found, str)
    hand = ((math.log(2) - math.log(100)) - (math.log(100) - math.log(120))) - (
        (math.log(9) - math.log(10)) - (math.log(6) - math.log(8)))
    assert found.value == pytest.approx(hand)
    se_log = half_width / T_975_DF4  # the same relative SE in each of the 8 cells
    half = Z_975 * math.sqrt(8 * se_log**2)
    assert found.ci == pytest.approx((hand - half, hand + half))
    assert found.sync_io_fold == pytest.approx(50.0)
    assert found.async_io_fold == pytest.approx(1.2)
    missing = interaction(lambda c, r, ms: None if r == "cpu" else table[c, r, ms], "s", "a",
                          "io_read", 0, 200, floor=0.01)
    assert isinstance(missing, str) and "cpu/" in missing


# -- the page in a real browser --------------------------------------------------------------

def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_renders_in_headless_chromium_with_every_figure(
        report: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from PIL import Image

    html = report[0] / "report.html"
    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1280,4000", html.as_uri(),
                      tmp=tmp_path)
    assert shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 200, f"page looks blank: {len(colours)} colours"
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", html.as_uri(), tmp=tmp_path)
    assert 'data-images="loaded"' in dom.stdout, dom.stderr[-2000:]
    assert f'data-image-count="{len(CELLS) + 4}"' in dom.stdout


# -- a real run ----------------------------------------------------------------------------

@pytest.mark.integration
def test_report_of_a_small_real_run(tmp_path: Path) -> None:
    """The report `bench run` writes at the end of a real run of 8 cells: the report needs
    every cell and the interaction, not a given load (tiny profile: 5 users, 4 s)."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--variants", "sync_gunicorn,async_unlimited",
         "--routes", "cpu,io_create", "--latencies", "0,50", "--profile", "tiny",
         "--latency-backend", "proxy", "--rows", "2000", "--cpu-loop", "1000",
         "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert "report failed" not in result.stderr, result.stderr[-3000:]
    assert (out / "report.html").is_file(), result.stderr[-3000:]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    cells = json.loads((out / "run.json").read_text())["cells"]
    assert len(cells) == 8
    for cell in cells:
        assert cell in md and cell in html
    for column in ("sync_gunicorn", "async_unlimited"):
        assert f"| {column} " in md or f" {column} |" in md
    # Both routes at both latencies succeeded, so the interaction is a number, not the
    # sentence saying why it cannot be estimated (which also names "three-way interaction").
    assert len(stated_interactions(md)) == 1, md
    assert "cannot be estimated" not in md


def test_repeats_are_averaged_and_their_ci_is_student_t(tmp_path: Path) -> None:
    """Two repeats of a cell: the tables show the mean and the repeats' t interval; a cell
    with one failed repeat says how many repeats it rests on."""
    folder = make_results(tmp_path / "run")
    run = json.loads((folder / "run.json").read_text())
    second = []
    for (column, route, latency), (steady, _ci, peak, _successes) in CELLS.items():
        data = json.loads((folder / "cells" / cell_id(column, route, latency) / "cell.json"
                           ).read_text())
        data["cell_id"] = data["cell_id"].replace("__r1", "__r2")
        data["repeat"] = 2
        data["metrics"]["steady_srps"] = steady + 2  # repeats: steady, steady + 2
        data["metrics"]["max_srps"] = peak + 1
        if (column, route, latency) == ("sync_gunicorn", "cpu", 0):
            data.update(status="failed", reason="server exited with code 1")
        (folder / "cells" / data["cell_id"]).mkdir()
        (folder / "cells" / data["cell_id"] / "cell.json").write_text(json.dumps(data))
        second.append(data["cell_id"])
    run["cells"] += second
    run["config"]["repeats"] = 2
    (folder / "run.json").write_text(json.dumps(run))
    build_report(folder)
    md = (folder / "report.md").read_text()
    half = T_975_DF1 * math.sqrt(2) / math.sqrt(2)  # sd of (x, x + 2) is sqrt(2)
    io = section(md, "Table 3, io_create/: steady sRPS ± 95% CI")
    assert f"| 0 | 101.0 ± {half:.1f} † | 91.0 ± {half:.1f} † |" in io
    cpu = section(md, "Table 1, cpu/: max sRPS & total successes")
    assert "| 0 | 12.5 & 100 (1 of 2 repeats) |" in cpu
    assert "mean over the repeats with a Student t interval" in md



def test_proxy_overhead_relay_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/proxy_overhead.py --relay: only with --requests or --end-to-end (haproxy
    only with --requests), one of its three choices, and without haproxy on PATH one line
    saying how to get it; the config it writes names the hop's two ends."""
    module = _proxy_overhead()
    for argv, message in (
            (["--relay", "python"], "--relay goes with --requests or --end-to-end"),
            (["--end-to-end", "--relay", "haproxy"], "--relay haproxy goes with --requests"),
            (["--requests", "--relay", "nginx"], "invalid choice: 'nginx'")):
        monkeypatch.setattr(sys, "argv", ["proxy_overhead.py", *argv])
        with pytest.raises(SystemExit) as exit_info:
            module.main()
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match=r"no haproxy on PATH \(apt-get install haproxy\)"):
        module.HaproxySession([0], tmp_path)
    config = module.HAPROXY_CONFIG.format(port=1234, host="10.0.0.2", upstream_port=5432)
    assert "bind 127.0.0.1:1234" in config and "server upstream 10.0.0.2:5432" in config
