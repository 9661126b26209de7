"""python -m bench compare: hand-made runs whose answer is known (a cell 20% faster with
tight intervals, a 2% change inside the noise, a slower cell, mismatched backends and
machines), the Welch test against a hand computation, the files, and the exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scipy import stats
from test_report import CHROMIUM, chromium, make_results  # the report's helpers

from bench.record import CellMetrics, CellRecord
from bench.report import ReportError, read_run, write_comparison
from bench.report.compare import (
    FASTER,
    NO_TEST,
    NOT_SIGNIFICANT,
    SLOWER,
    compare_runs,
    welch_test,
)
from bench.report.interaction import interactions
from bench.report.stats import Estimate
from bench.report.study import Comparison
from bench.report.tables import run_estimates

XSS = "<script>alert(1)</script>"
COLUMNS = {"sync_gunicorn": ("wsgi", "Sync"), "async_unlimited": ("asgi", "Async Unlimited")}
BATCHES = 56
CALIBRATION = [50.0, 50.4, 49.8, 50.2, 50.1, 49.9, 50.3]
PROFILE = {"name": "quick", "users": 200, "spawn_rate": 100, "min_hold_s": 8,
           "max_hold_s": 14, "precision": 0.05, "timeout_s": 300, "cpu_ms": 670,
           "description": "The default."}
Key = tuple[str, str, int]
# (column, route, latency) -> steady sRPS and its 95% half-width; every cell of a run
BASE: dict[Key, tuple[float, float]] = {
    ("sync_gunicorn", "cpu", 0): (1.5, 0.1),
    ("sync_gunicorn", "cpu", 100): (1.4, 0.1),
    ("sync_gunicorn", "io_create", 0): (100.0, 2.0),
    ("sync_gunicorn", "io_create", 100): (2.0, 0.2),
    ("async_unlimited", "cpu", 0): (1.0, 0.1),
    ("async_unlimited", "cpu", 100): (1.0, 0.1),
    ("async_unlimited", "io_create", 0): (150.0, 15.0),
    ("async_unlimited", "io_create", 100): (120.0, 10.0),
}


def cell_id(key: Key, repeat: int = 1) -> str:
    return f"{key[0]}__{key[1]}__{key[2]}ms__r{repeat}"


def make_run(folder: Path, cells: dict[Key, tuple[float, float]] | None = None,
             repeats: list[dict[Key, tuple[float, float]]] | None = None,
             probes: list[float] | None = None,
             **info: Any) -> Path:
    """A real results folder: run.json as the runner writes it and one cell.json per cell
    and repeat, written through bench.record.CellRecord. `repeats`: one dict per repeat;
    `probes`: the machine's speed probe during each cell, in the order they are written."""
    per_repeat = repeats or [cells if cells is not None else BASE]
    ids = []
    for repeat, values in enumerate(per_repeat, 1):
        for key, (steady, half) in values.items():
            column, route, latency = key
            interface, label = COLUMNS.get(column, ("asgi", None))
            record = CellRecord(
                cell_id=cell_id(key, repeat), column=column, variant=column, route=route,
                latency_ms=latency, repeat=repeat, status="ok", title=column,
                study_label=label, interface=interface, latency_backend="proxy",
                stopped_by="precision",
                metrics=CellMetrics(steady_srps=steady,
                                    steady_srps_ci95=[steady - half, steady + half],
                                    batches=BATCHES, p99_ms=1000.0 / max(steady, 0.1),
                                    max_srps=steady * 1.1, total_successes=int(steady * 10),
                                    machine_probe_ms=probes[len(ids)] if probes else None))
            record.write(folder / "cells" / record.cell_id / "cell.json")
            ids.append(record.cell_id)
    run = {"format": 2, "run_id": folder.name, "status": "complete",
           "started_at": "2026-11-26T10:00:00+00:00", "config": {"repeats": len(per_repeat)},
           "profile": PROFILE, "latency_backend": "proxy",
           "machine": {"cores": 2, "cpu_model": "Test CPU", "memory_gib": 23.6,
                       "python": "3.11.7", "kernel": "6.1"},
           "machine_calibration": {"loop": 1000000, "samples_ms": CALIBRATION,
                                   "median_ms": 50.1, "cv": 0.004, "noisy": False},
           "cpu_work": {"loop": 12000000}, "packages": {"django": "5.2.19"},
           "postgres_version": "16.2", "git_commit": "0123456789abcdef", "cells": ids}
    run.update(info)
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def changed(key: Key, steady: float, half: float | None = None) -> dict[Key, tuple[float, float]]:
    """BASE with one cell changed."""
    return {**BASE, key: (steady, BASE[key][1] if half is None else half)}


SYNC_IO = ("sync_gunicorn", "io_create", 0)


def only(comparison_cells: list[Any], key: Key) -> Any:
    return next(c for c in comparison_cells if (c.column, c.route, c.latency_ms) == key)


def run_compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "compare", *args],
                          capture_output=True, text=True, timeout=180)


# -- the test and the verdicts ------------------------------------------------------------

def test_a_cell_20_percent_faster_with_tight_intervals_is_faster(tmp_path: Path) -> None:
    base = read_run(make_run(tmp_path / "base"))
    new = read_run(make_run(tmp_path / "new", changed(SYNC_IO, 120.0)))
    comparison = compare_runs(base, new)
    cell = only(comparison.cells, SYNC_IO)
    assert cell.verdict == FASTER
    assert cell.ratio == pytest.approx(1.2)
    low, high = cell.ratio_ci
    assert 1 < low < 1.2 < high
    # every other cell is unchanged
    assert [c.verdict for c in comparison.cells if c is not cell] == [NOT_SIGNIFICANT] * 7
    assert comparison.regressions == []


def test_welch_equals_hand_computation() -> None:
    """Two batch-means intervals, 56 and 11 batches: the standard errors are half-width
    over t(k - 1), the degrees of freedom Welch-Satterthwaite's."""
    base = Estimate(100.0, 98.0, 102.0, 1, 55, "batch means")
    new = Estimate(104.0, 99.0, 109.0, 1, 10, "batch means")
    se_b = 2.0 / stats.t.ppf(0.975, 55)
    se_n = 5.0 / stats.t.ppf(0.975, 10)
    df = (se_b**2 + se_n**2) ** 2 / (se_b**4 / 55 + se_n**4 / 10)
    t = 4.0 / math.sqrt(se_b**2 + se_n**2)
    test = welch_test(base, new)
    assert test is not None
    assert test.df == pytest.approx(df)
    assert test.p_value == pytest.approx(2 * (1 - stats.t.cdf(t, df)))
    assert 0.05 < test.p_value < 0.2  # a 4% change, but NEW's interval is +-5
    half = stats.t.ppf(0.975, df) * math.sqrt(se_b**2 + se_n**2)
    assert (test.low, test.high) == pytest.approx((4 - half, 4 + half))
    assert welch_test(base, Estimate(104.0, None, None, 1, None, "none")) is None


def test_a_2_percent_change_inside_the_noise_is_not_significant(tmp_path: Path) -> None:
    key = ("async_unlimited", "io_create", 0)  # 150 +- 15
    base = read_run(make_run(tmp_path / "base"))
    new = read_run(make_run(tmp_path / "new", changed(key, 153.0)))
    cell = only(compare_runs(base, new).cells, key)
    assert cell.verdict == NOT_SIGNIFICANT
    assert cell.ratio == pytest.approx(1.02)
    assert cell.test.p_value > 0.5
    assert cell.ratio_ci[0] < 1 < cell.ratio_ci[1]


def test_a_significant_change_within_min_change_is_not_significant(tmp_path: Path) -> None:
    base = read_run(make_run(tmp_path / "base"))
    new = read_run(make_run(tmp_path / "new", changed(SYNC_IO, 90.0)))  # 100 +- 2 -> 90
    assert only(compare_runs(base, new).cells, SYNC_IO).verdict == SLOWER
    cell = only(compare_runs(base, new, min_change=0.15).cells, SYNC_IO)
    assert cell.verdict == NOT_SIGNIFICANT
    assert "within --min-change 15%" in cell.note


def test_repeats_are_tested_across_repeats_whatever_their_number(tmp_path: Path) -> None:
    """3 repeats against 2: each side's interval is across its repeats (n - 1 degrees of
    freedom), not the cells' tight batch-means ones."""
    base = read_run(make_run(tmp_path / "base", repeats=[
        changed(SYNC_IO, v, 0.5) for v in (100.0, 104.0, 96.0)]))
    new = read_run(make_run(tmp_path / "new", repeats=[
        changed(SYNC_IO, v, 0.5) for v in (107.0, 103.0)]))
    cell = only(compare_runs(base, new).cells, SYNC_IO)
    assert (cell.base.n, cell.base.df, cell.new.n, cell.new.df) == (3, 2, 2, 1)
    assert cell.base.method == cell.new.method == "repeats"
    # within the cells (+-0.5) a 5% change would be certain; across repeats it is not
    assert cell.verdict == NOT_SIGNIFICANT
    res = stats.ttest_ind([100.0, 104.0, 96.0], [107.0, 103.0], equal_var=False)
    assert cell.test.p_value == pytest.approx(res.pvalue)


def test_a_run_compared_with_itself_has_nothing_significant(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "run")
    comparison = compare_runs(read_run(folder), read_run(folder))
    assert {c.verdict for c in comparison.cells} == {NOT_SIGNIFICANT}
    assert comparison.warnings == []
    assert all(not row.differs for row in comparison.metadata)


def test_a_first_round_run_with_failed_and_missing_cells_compares_with_itself(
        tmp_path: Path) -> None:
    """test_report's hand-made run (format 1 cells, one failed, one never run)."""
    folder = make_results(tmp_path / "run")
    comparison = compare_runs(read_run(folder), read_run(folder))
    notes = {c.label: c.note for c in comparison.cells if c.verdict == NO_TEST}
    assert notes == {"async_uvicorn io_create/ 100 ms": "both: failed",
                     "async_uvicorn cpu/ 100 ms": "both: missing"}
    assert {c.verdict for c in comparison.cells} == {NOT_SIGNIFICANT, NO_TEST}
    assert comparison.warnings == ["machine speed cannot be compared: BASE and NEW recorded "
                                   "no machine_calibration, nor a CPU probe in their cells"]


def test_a_cell_without_steady_srps_is_listed_with_no_test(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    new = make_run(tmp_path / "new")
    cell = new / "cells" / cell_id(SYNC_IO) / "cell.json"
    data = json.loads(cell.read_text())
    data.update(status="failed", reason="server exited with code 1")
    cell.write_text(json.dumps(data))
    found = only(compare_runs(read_run(base), read_run(new)).cells, SYNC_IO)
    assert (found.verdict, found.note) == (NO_TEST, "NEW: failed")


# -- what is matched, and what is listed ------------------------------------------------------

def test_columns_on_one_side_only_are_listed_and_the_rest_matched(tmp_path: Path) -> None:
    extra = {("async_pooled", "io_create", 0): (300.0, 5.0)}
    base = make_run(tmp_path / "base")
    new = make_run(tmp_path / "new", {**BASE, **extra})
    comparison = compare_runs(read_run(base), read_run(new))
    assert len(comparison.cells) == len(BASE)
    assert (comparison.base_only_columns, comparison.new_only_columns) == ([], ["async_pooled"])
    write_comparison(base, new)
    assert "Columns only in NEW: async_pooled." in (new / "compare.md").read_text()


def test_runs_with_nothing_in_common_are_a_report_error(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    new = make_run(tmp_path / "new", {("async_pooled", "io_create", 0): (300.0, 5.0)})
    with pytest.raises(ReportError, match="no cell in common"):
        compare_runs(read_run(base), read_run(new))


def test_pair_compares_a_sweep_column_with_its_base_column(tmp_path: Path) -> None:
    """A deliberate change of setting gets another column name (async_pooled+pool5): --pair
    matches it with BASE's column, and only NEW's column of that name is dropped."""
    base = make_run(tmp_path / "base", {("async_pooled", "io_create", 100): (160.0, 5.0)})
    new = make_run(tmp_path / "new", {("async_pooled+pool5", "io_create", 100): (45.0, 2.0),
                                      ("async_pooled", "io_create", 100): (999.0, 5.0)})
    pairs = [("async_pooled", "async_pooled+pool5")]
    comparison = compare_runs(read_run(base), read_run(new), 0.05, pairs)
    [cell] = comparison.cells
    assert (cell.column, cell.verdict) == ("async_pooled", SLOWER)
    assert cell.ratio == pytest.approx(45.0 / 160.0)
    assert any("async_pooled+pool5 is compared with BASE's async_pooled" in w
               for w in comparison.warnings)
    with pytest.raises(ReportError, match="NEW .* has no column 'async_pooled\\+pool9'"):
        compare_runs(read_run(base), read_run(new), 0.05,
                     [("async_pooled", "async_pooled+pool9")])
    result = run_compare(str(base), str(new), "--pair", "async_pooled=async_pooled+pool5",
                         "--fail-on-regression", "--out", str(tmp_path / "o"))
    assert result.returncode == 1, result.stderr
    assert "async_pooled io_create/ 100 ms" in result.stderr


# -- the runs' context --------------------------------------------------------------------------

def test_a_mismatched_backend_is_a_warning(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    new = make_run(tmp_path / "new", latency_backend="netem")
    comparison = compare_runs(read_run(base), read_run(new))
    assert len(comparison.warnings) == 1
    assert comparison.warnings[0].startswith("latency backend differs: BASE proxy, NEW netem")
    result = run_compare(str(base), str(new))
    assert result.returncode == 0, result.stderr
    assert "warning: latency backend differs: BASE proxy, NEW netem" in result.stdout
    assert "latency backend differs" in (new / "compare.md").read_text()


def test_a_profile_or_a_slower_machine_is_a_warning_a_django_version_is_not(
        tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    slower = [v * 1.2 for v in CALIBRATION]
    new = make_run(tmp_path / "new", profile={**PROFILE, "name": "long", "max_hold_s": 60},
                   machine_calibration={"loop": 1000000, "samples_ms": slower},
                   packages={"django": "5.2.20"})
    comparison = compare_runs(read_run(base), read_run(new))
    assert [w.split(":")[0] for w in comparison.warnings] == ["profile differs",
                                                              "machine speed differs"]
    assert "(+20.0%;" in comparison.warnings[1]
    assert {r.key for r in comparison.metadata if r.differs} >= {"django", "profile",
                                                                 "machine speed at start"}
    # the same machine, measured again within its noise: no warning
    again = [50.3, 49.9, 50.0, 50.4, 49.8, 50.2, 50.1]
    same = make_run(tmp_path / "same", machine_calibration={"loop": 1000000,
                                                            "samples_ms": again})
    assert compare_runs(read_run(base), read_run(same)).warnings == []


def test_machine_speed_is_compared_on_the_cells_probes_not_on_the_start_calibration(
        tmp_path: Path) -> None:
    """As two default runs on one machine: the calibration before the first cell read
    54.4 and 93.3 ms, the cells' own probes 4.151 and 4.133 ms (the machine switches
    between a fast and a slow state; the start caught one of each)."""
    base_probes = [4.10, 4.20, 4.05, 4.25, 4.15, 4.12, 4.18, 4.08]
    fast_start = [54.0, 54.5, 54.2, 54.9, 54.4, 54.1, 54.6]
    slow_start = [93.0, 93.5, 93.3, 92.8, 93.9, 93.1, 93.4]
    base = make_run(tmp_path / "base", probes=base_probes,
                    machine_calibration={"loop": 1000000, "samples_ms": fast_start})
    same = make_run(tmp_path / "same", probes=[v + 0.01 for v in reversed(base_probes)],
                    machine_calibration={"loop": 1000000, "samples_ms": slow_start})
    assert compare_runs(read_run(base), read_run(same)).warnings == []
    # the cells' probes 10% slower: a warning that quotes them, whatever the start said
    slower = make_run(tmp_path / "slower", probes=[v * 1.1 for v in base_probes],
                      machine_calibration={"loop": 1000000, "samples_ms": fast_start})
    comparison = compare_runs(read_run(base), read_run(slower))
    (warning,) = comparison.warnings
    assert warning.startswith("machine speed differs: its CPU probe read 4.135 ms")
    assert "(+10.0%; Welch's t-test on the 8 + 8 cells" in warning
    rows = {r.key: r for r in comparison.metadata}
    assert rows["machine speed in cells"].base.startswith("median 4.135 ms")
    assert rows["machine speed in cells"].new.endswith("(8 cells)")
    # a run whose cells have no probe (an older one): the start calibration decides
    old = make_run(tmp_path / "old", machine_calibration={"loop": 1000000,
                                                          "samples_ms": slow_start})
    (warning,) = compare_runs(read_run(base), read_run(old)).warnings
    assert warning.startswith("machine speed differs: the calibration loop took 54.4 ms")


def test_a_cpu_budget_against_a_sized_loop_is_different_work(tmp_path: Path) -> None:
    budget = {"ms": 670, "source": "profile quick"}
    base = make_run(tmp_path / "base", cpu_work=budget)
    same = make_run(tmp_path / "same", cpu_work={**budget, "source": "--cpu-ms"})
    assert compare_runs(read_run(base), read_run(same)).warnings == []
    loop = make_run(tmp_path / "loop", cpu_work={"loop": 7179212, "source": "profile quick",
                                                  "expected_ms": 670.0})
    comparison = compare_runs(read_run(base), read_run(loop))
    assert comparison.warnings == [
        "cpu/ does different work: 670 ms of CPU a request in BASE, a loop of 7,179,212 "
        "turns in NEW (a loop sized at the start of a run costs what the machine's speed "
        "makes of it)"]
    rows = {r.key: r for r in comparison.metadata}
    assert rows["cpu/ work"].base == "670 ms of CPU a request (profile quick)"
    assert rows["cpu/ work"].new == "a loop of 7,179,212 turns (profile quick)"


# -- the report's conclusions, side by side -----------------------------------------------------

def test_interaction_and_verdicts_are_the_reports_on_each_run(tmp_path: Path) -> None:
    """Sync io_create/ at 100 ms collapsing in NEW moves the interaction by its log ratio,
    and the values are those the report computes on each run."""
    base = read_run(make_run(tmp_path / "base"))
    new = read_run(make_run(tmp_path / "new", changed(("sync_gunicorn", "io_create", 100),
                                                      60.0, 3.0)))
    comparison = compare_runs(base, new)
    (change,) = comparison.interactions
    report_base = interactions(base, run_estimates(base))[0][0]
    report_new = interactions(new, run_estimates(new))[0][0]
    assert (change.base.value, change.new.value) == (report_base.value, report_new.value)
    assert change.difference == pytest.approx(math.log(60.0 / 2.0))
    assert change.changed is True
    verdicts = {v.number: v for v in comparison.verdicts}
    held = {v.number: v.held for v in Comparison(new).verdicts()}
    assert {n: v.new_held for n, v in verdicts.items()} == held
    assert verdicts[2].base_held != verdicts[2].new_held
    assert any("Sync at 100 ms ÷ Sync at 0 ms" in c for c in verdicts[2].changed_checks)


# -- files and exit codes --------------------------------------------------------------------

def test_files_escape_what_the_runs_say_and_html_is_self_contained(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", run_id=XSS, packages={"django": f"5.2 {XSS}"})
    new = make_run(tmp_path / "new", changed(SYNC_IO, 120.0))
    out = tmp_path / "out"
    _, _, paths = write_comparison(base, new, out_dir=out)
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "compare.md", "compare.html", "figures/compare_ratios.png"]
    html = (out / "compare.html").read_text()
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('src="data:image/png;base64,') == 1
    assert "http://" not in html and "https://" not in html
    md = (out / "compare.md").read_text()
    assert XSS not in md
    assert "| sync_gunicorn | io_create/ | 0 | 100.0 ± 2.0 | 120.0 ± 2.0 | 1.20 (" in md
    assert "| faster |" in md
    assert "![" in md and "(figures/compare_ratios.png)" in md


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_opens_in_headless_chromium_with_its_figure(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    new = make_run(tmp_path / "new", changed(SYNC_IO, 120.0))
    write_comparison(base, new)
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", (new / "compare.html").as_uri(),
                   tmp=tmp_path)
    assert 'data-images="loaded"' in dom.stdout, dom.stderr[-2000:]
    assert 'data-image-count="1"' in dom.stdout


def test_exit_codes_of_the_gate(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    slower = make_run(tmp_path / "slower", changed(SYNC_IO, 90.0))  # 10% slower, +-2
    assert run_compare(str(base), str(base), "--fail-on-regression",
                       "--out", str(tmp_path / "o1")).returncode == 0
    result = run_compare(str(base), str(slower), "--fail-on-regression")
    assert result.returncode == 1
    assert result.stderr == ("regression: 1 cell(s) significantly slower by more than 0%: "
                             "sync_gunicorn io_create/ 0 ms\n")
    assert (slower / "compare.html").is_file()  # default --out: NEW
    assert run_compare(str(base), str(slower)).returncode == 0  # no gate asked for
    assert run_compare(str(base), str(slower), "--fail-on-regression",
                       "--min-change", "15%").returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/nothing", "{base}"], "is not a results folder (no run.json)"),
    (["{base}", "{other}"], "no cell in common"),
    (["{base}", "{base}", "--min-change", "abc"], "--min-change: must be a fraction"),
    (["{base}", "{base}", "--min-change", "-5%"], "must be a fraction in [0, 1) such as "
                                                  "0.05 or 5%, got '-5%'"),
    (["{base}", "{base}", "--min-change=-0.05"], "--min-change: must be a fraction"),
    (["{base}", "{base}", "--min-change", "100%"], "--min-change: must be a fraction"),
    (["{base}", "{base}", "--pair", "async_pooled"], "expected BASE_COLUMN=NEW_COLUMN"),
    (["{base}", "{base}", "--pair", "nope=sync_gunicorn"], "has no column 'nope'"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                             message: str) -> None:
    base = make_run(tmp_path / "base")
    other = make_run(tmp_path / "other", {("async_pooled", "io_create", 0): (300.0, 5.0)})
    (tmp_path / "nothing").mkdir()
    result = run_compare(*(a.format(tmp=tmp_path, base=base, other=other) for a in args))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
