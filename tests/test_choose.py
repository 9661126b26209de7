"""What to choose: the Pareto front and the winner by steady sRPS, on hand-made results
folders (test_report's) whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_report import MISSING, XSS, cell_id, make_results

from bench.report import build_report
from bench.report.choose import Choice, choice_sentences, choose, winner_sentence
from bench.report.data import load_run
from bench.report.stats import steady_estimate, t_interval


def edit_cell(folder: Path, column: str, route: str, latency: int, repeat: int = 1,
              **changes: Any) -> None:
    """Change a hand-made cell's metrics (None removes one)."""
    path = (folder / "cells" / cell_id(column, route, latency).replace("__r1", f"__r{repeat}")
            / "cell.json")
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data["metrics"].pop(key, None)
        else:
            data["metrics"][key] = value
    path.write_text(json.dumps(data))


def choice_of(folder: Path, route: str, latency: int) -> Choice:
    run = load_run(folder)
    estimates = {(c.name, route, latency): e for c in run.columns
                 if (e := steady_estimate(run.group(c.name, route, latency))) is not None}
    return choose(run, estimates, route, latency)


def trade_off(folder: Path) -> None:
    """io_create/ at 0 ms: sync_gunicorn is slower but the cheapest; async_unlimited the
    fastest; async_uvicorn is worse than both on all four axes."""
    edit_cell(folder, "sync_gunicorn", "io_create", 0, steady_srps=100.0,
              steady_srps_ci95=[95.0, 105.0], p99_ms=50.0, peak_server_db_rss_mib=80.0,
              peak_db_connections=1)
    edit_cell(folder, "async_uvicorn", "io_create", 0, steady_srps=90.0,
              steady_srps_ci95=[85.0, 95.0], p99_ms=70.0, peak_server_db_rss_mib=300.0,
              peak_db_connections=100)
    edit_cell(folder, "async_unlimited", "io_create", 0, steady_srps=120.0,
              steady_srps_ci95=[110.0, 130.0], p99_ms=60.0, peak_server_db_rss_mib=290.0,
              peak_db_connections=99)


def test_a_column_better_on_one_axis_stays_on_the_front_one_worse_on_all_four_does_not(
        tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    trade_off(folder)
    found = choice_of(folder, "io_create", 0)
    # sync_gunicorn has the lowest sRPS but the fewest connections and least memory.
    assert found.front == ["sync_gunicorn", "async_unlimited"]
    assert found.dominated == {"async_uvicorn": ["sync_gunicorn", "async_unlimited"]}
    assert found.winner is not None
    assert (found.winner.best.column, found.winner.runner_up and
            found.winner.runner_up.column, found.winner.separated) == (
        "async_unlimited", "sync_gunicorn", True)
    assert choice_sentences(found)[:3] == [
        "io_create/ at 0 ms: Pareto front (steady sRPS, p99, peak server + DB MiB, peak DB "
        "connections): sync_gunicorn, async_unlimited.",
        "Dominated: async_uvicorn (by sync_gunicorn, async_unlimited).",
        "Highest steady sRPS: async_unlimited, 120.0 (95% CI 110.0 to 130.0, within the "
        "cell), ahead of the runner-up sync_gunicorn at 100.0 (95% CI 95.0 to 105.0, within "
        "the cell) by 20.0 sRPS (1.20x); the intervals do not overlap: separated."]


def test_equal_on_three_axes_and_slower_is_dominated(tmp_path: Path) -> None:
    """The hand-made cells share p99, memory and connections, so the fastest column
    dominates the others: a front by strict dominance on every axis would keep all three."""
    found = choice_of(make_results(tmp_path / "run"), "io_create", 0)
    assert found.front == ["async_unlimited"]
    assert found.dominated == {"sync_gunicorn": ["async_unlimited"],
                               "async_uvicorn": ["async_unlimited"]}


def test_overlapping_intervals_do_not_separate_the_winner(tmp_path: Path) -> None:
    # cpu/ at 100 ms: sync_gunicorn 10.0 (9.5 to 10.5) beside async_unlimited 8.0 (6 to 10).
    found = choice_of(make_results(tmp_path / "run"), "cpu", 100)
    assert found.winner is not None and found.winner.separated is False
    sentences = choice_sentences(found)
    assert ("Highest steady sRPS: sync_gunicorn, 10.0 (95% CI 9.5 to 10.5, within the "
            "cell), ahead of the runner-up async_unlimited at 8.0 (95% CI 6.0 to 10.0, "
            "within the cell) by 2.0 sRPS (1.25x); the intervals overlap: not separated, "
            "this run cannot rank the two.") in sentences
    assert sentences[-1] == "Not compared: async_uvicorn (missing: no cell.json)."


def test_with_repeats_the_intervals_are_across_repeats(tmp_path: Path) -> None:
    """Each cell's own interval would separate async_unlimited (110 to 130, 100 to 120)
    from sync_gunicorn (95 to 105); the two repeats of each disagree, so the intervals
    across repeats overlap and the winner is not separated."""
    folder = make_results(tmp_path / "run")
    trade_off(folder)
    run = json.loads((folder / "run.json").read_text())
    for column, steady, ci in (("sync_gunicorn", 102.0, [97.0, 107.0]),
                               ("async_uvicorn", 88.0, [83.0, 93.0]),
                               ("async_unlimited", 110.0, [100.0, 120.0])):
        first = folder / "cells" / cell_id(column, "io_create", 0)
        data = json.loads((first / "cell.json").read_text())
        data.update(cell_id=data["cell_id"].replace("__r1", "__r2"), repeat=2)
        data["metrics"].update(steady_srps=steady, steady_srps_ci95=ci)
        if column == "async_uvicorn":
            data.update(status="failed", reason="server exited with code 1")
        (folder / "cells" / data["cell_id"]).mkdir()
        (folder / "cells" / data["cell_id"] / "cell.json").write_text(json.dumps(data))
        run["cells"].append(data["cell_id"])
    (folder / "run.json").write_text(json.dumps(run))
    found = choice_of(folder, "io_create", 0)
    assert found.winner is not None and found.winner.best.srps.method == "repeats"
    assert (found.winner.best.srps.low, found.winner.best.srps.high) == pytest.approx(
        t_interval([120.0, 110.0]))
    assert found.winner.separated is False
    assert found.front == ["sync_gunicorn", "async_unlimited"]
    # async_uvicorn rests on its one successful repeat, and says so.
    assert choice_sentences(found)[1] == ("Dominated: async_uvicorn (1 of 2 repeats) (by "
                                          "sync_gunicorn, async_unlimited).")
    low, high = t_interval([120.0, 110.0]) or (0, 0)
    assert (f"Highest steady sRPS: async_unlimited, 115.0 (95% CI {low:,.1f} to "
            f"{high:,.1f}, across 2 repeats)") in choice_sentences(found)[2]


def test_failed_unsteady_and_incomplete_columns_are_named(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    edit_cell(folder, "async_unlimited", "io_create", 100, unsteady=True)
    edit_cell(folder, "sync_gunicorn", "io_create", 100, p99_ms=None)
    found = choice_of(folder, "io_create", 100)
    assert [p.column for p in found.incomplete] == ["sync_gunicorn"]
    assert found.front == ["async_unlimited"]  # alone: sync_gunicorn lacks p99
    sentences = choice_sentences(found)
    assert sentences[0].endswith("peak DB connections): async_unlimited ‡.")
    assert "Left out of the front for lack of a figure: sync_gunicorn (no p99)." in sentences
    assert ("‡ never settled, compared as measured (an average over a drift, not a steady "
            "state): async_unlimited.") in sentences
    # The winner is still ranked by sRPS among every column that has one.
    assert "Highest steady sRPS: async_unlimited ‡, 110.0" in sentences[2]
    assert sentences[-1] == (f"Not compared: async_uvicorn (failed: VerificationError: "
                             f"io_create/ answered {XSS}).")


def test_a_column_that_ran_but_has_no_steady_srps_is_named(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    edit_cell(folder, "sync_gunicorn", "cpu", 0, steady_srps=None, steady_srps_ci95=None,
              total_successes=0)
    sentences = choice_sentences(choice_of(folder, "cpu", 0))
    assert sentences[-1] == "Not compared: sync_gunicorn (no steady sRPS: 0 successful requests)."


def test_the_section_opens_the_report_with_a_figure_per_route_and_is_escaped(
        tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    trade_off(folder)
    paths = build_report(folder)
    names = {p.name for p in paths}
    assert {"choose_cpu.png", "choose_io_create.png", "choose_cpu.svg"} <= names
    md = (folder / "report.md").read_text()
    assert md.index("## What to choose") < md.index("## Summary")
    section = md[md.index("## What to choose"):md.index("## Summary")]
    assert "![io_create/: steady sRPS against peak DB connections" in section
    assert ("- io_create/ at 0 ms: Pareto front (steady sRPS, p99, peak server + DB MiB, "
            "peak DB connections): sync_gunicorn, async_unlimited. Dominated: "
            "async_uvicorn (by sync_gunicorn, async_unlimited).") in section
    assert MISSING.startswith("async_uvicorn__cpu__100ms")
    assert ("- cpu/ at 100 ms: Pareto front" in section
            and "Not compared: async_uvicorn (missing: no cell.json)." in section)
    html = (folder / "report.html").read_text()
    top = html[html.index("<h2>What to choose</h2>"):html.index('<section class="summary">')]
    assert top.count("<img") == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in top and XSS not in html


def test_a_tie_on_srps_is_said_and_not_separated(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    edit_cell(folder, "async_unlimited", "cpu", 0, steady_srps=10.0,
              steady_srps_ci95=[10.0, 10.0])
    edit_cell(folder, "sync_gunicorn", "cpu", 0, steady_srps_ci95=[10.0, 10.0])
    winner = choice_of(folder, "cpu", 0).winner
    assert winner is not None and winner.separated is False
    assert winner_sentence(winner).startswith(
        "Highest steady sRPS: sync_gunicorn, 10.0 (95% CI 10.0 to 10.0, within the cell), "
        "level with the runner-up async_unlimited at 10.0")
