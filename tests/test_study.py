"""The verdicts on the study's conclusions 1 and 2, on hand-made runs whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report.data import CellRecord, Run
from bench.report.study import Comparison, Verdict

SETUPS = {  # column: (study label, interface)
    "sync": ("Sync", "wsgi"),
    "limited": ("Async Limited", "asgi"),
    "unlimited": ("Async Unlimited", "asgi"),
}


def cell(column: str, route: str, latency_ms: int, steady: float | None = None,
         successes: int | None = None) -> CellRecord:
    """One successful cell; steady sRPS decides a verdict, total successes stand in
    where a cell has no steady figure."""
    label, interface = SETUPS[column]
    metrics: dict[str, float] = {"max_srps": steady or 0.0}
    if steady is not None:
        metrics["steady_srps"] = steady
    if successes is not None:
        metrics["total_successes"] = successes
    return CellRecord(cell_id=f"{column}__{route}__{latency_ms}ms__r1", column=column,
                      variant=column, route=route, latency_ms=latency_ms, repeat=1, status="ok",
                      study_label=label, interface=interface, metrics=metrics)


def run_of(cells: list[CellRecord]) -> Run:
    return Run(folder=Path("handmade"), info={}, profile=None,  # type: ignore[arg-type]
               cells=cells)


def verdict(cells: list[CellRecord], number: int) -> Verdict:
    return next(v for v in Comparison(run_of(cells)).verdicts() if v.number == number)


def cpu_run(steady: dict[tuple[str, int], float]) -> list[CellRecord]:
    return [cell(column, "cpu", latency, value) for (column, latency), value in steady.items()]


# -- conclusion 1: on cpu/, Sync has more successes than either async setup -----------------

def test_conclusion_1_holds_when_sync_beats_both_async_setups_at_every_latency() -> None:
    found = verdict(cpu_run({("sync", 0): 10, ("limited", 0): 4, ("unlimited", 0): 5,
                             ("sync", 100): 10, ("limited", 100): 3, ("unlimited", 100): 6}), 1)
    assert found.held == "holds"
    assert [c.what for c in found.checks] == [
        "cpu/ Sync at 0 ms ÷ Async Unlimited at 0 ms", "cpu/ Sync at 0 ms ÷ Async Limited at 0 ms",
        "cpu/ Sync at 100 ms ÷ Async Unlimited at 100 ms",
        "cpu/ Sync at 100 ms ÷ Async Limited at 100 ms"]
    assert [c.run_steady for c in found.checks] == ["2.00", "2.50", "1.67", "3.33"]


def test_conclusion_1_does_not_hold_when_async_beats_sync_everywhere() -> None:
    found = verdict(cpu_run({("sync", 0): 2, ("limited", 0): 4, ("unlimited", 0): 5,
                             ("sync", 100): 2, ("limited", 100): 3, ("unlimited", 100): 6}), 1)
    assert found.held == "does not hold"
    assert [c.agrees for c in found.checks] == [False] * 4


def test_conclusion_1_partly_when_sync_wins_at_0_ms_only() -> None:
    found = verdict(cpu_run({("sync", 0): 10, ("limited", 0): 4, ("unlimited", 0): 5,
                             ("sync", 100): 10, ("limited", 100): 30, ("unlimited", 100): 20}),
                    1)
    assert found.held == "partly"
    assert [c.agrees for c in found.checks] == [True, True, False, False]


def test_conclusion_1_falls_back_to_total_successes_without_a_steady_figure() -> None:
    cells = [cell("sync", "cpu", 0, successes=100), cell("limited", "cpu", 0, successes=50),
             cell("unlimited", "cpu", 0, successes=200)]
    found = verdict(cells, 1)
    assert [(c.run_study_metric, c.agrees) for c in found.checks] == [("0.50", False),
                                                                      ("2.00", True)]
    assert found.held == "partly"


def test_conclusion_1_cannot_tell_without_cpu_cells() -> None:
    found = verdict([cell(c, "io_read", 0, 10) for c in SETUPS], 1)
    assert (found.held, found.note) == ("cannot tell", "This run has no cpu/ cells.")


# -- conclusion 2: on I/O, async beats sync at 0 ms; with latency sync collapses, async keeps
#    its throughput, Async Unlimited best ------------------------------------------------------

def io_run(sync: tuple[float, float], limited: tuple[float, float],
           unlimited: tuple[float, float]) -> list[CellRecord]:
    """Steady sRPS at (0 ms, 100 ms) per setup, on io_read/."""
    return [cell(column, "io_read", latency, value)
            for column, values in (("sync", sync), ("limited", limited),
                                   ("unlimited", unlimited))
            for latency, value in zip((0, 100), values, strict=True)]


C2_CHECKS = ["io_read/ Async Unlimited at 0 ms ÷ Sync at 0 ms",
             "io_read/ Async Limited at 0 ms ÷ Sync at 0 ms",
             "io_read/ Sync at 100 ms ÷ Sync at 0 ms",
             "io_read/ Async Unlimited at 100 ms ÷ Async Unlimited at 0 ms",
             "io_read/ Async Limited at 100 ms ÷ Async Limited at 0 ms",
             "io_read/ Async Unlimited at 100 ms ÷ Async Limited at 100 ms"]


def test_conclusion_2_holds_on_the_studys_own_shape() -> None:
    found = verdict(io_run(sync=(100, 2), limited=(120, 100), unlimited=(150, 140)), 2)
    assert [c.what for c in found.checks] == C2_CHECKS
    assert [c.expected for c in found.checks] == ["> 1", "> 1", "< 0.5", "> 0.5", "> 0.5",
                                                  "> 1"]
    assert [c.agrees for c in found.checks] == [True] * 6
    assert found.held == "holds"


def test_conclusion_2_does_not_hold_when_sync_wins_and_async_collapses() -> None:
    found = verdict(io_run(sync=(200, 180), limited=(100, 20), unlimited=(150, 10)), 2)
    assert [c.agrees for c in found.checks] == [False] * 6
    assert found.held == "does not hold"


def test_conclusion_2_partly_when_sync_keeps_its_throughput_with_latency() -> None:
    found = verdict(io_run(sync=(100, 90), limited=(120, 100), unlimited=(150, 140)), 2)
    assert [c.agrees for c in found.checks] == [True, True, False, True, True, True]
    assert found.held == "partly"


def test_conclusion_2_at_a_single_latency_tests_only_async_against_sync() -> None:
    cells = [c for c in io_run(sync=(100, 2), limited=(120, 100), unlimited=(150, 140))
             if c.latency_ms == 0]
    found = verdict(cells, 2)
    assert [c.what for c in found.checks] == C2_CHECKS[:2]
    assert found.held == "holds"
    assert found.note == "This run has a single latency, so the latency ratios cannot be made."


@pytest.mark.parametrize("missing", ["limited", "unlimited"])
def test_a_setup_without_a_column_cannot_be_compared(missing: str) -> None:
    cells = [c for c in io_run(sync=(100, 2), limited=(120, 100), unlimited=(150, 140))
             if c.column != missing]
    found = verdict(cells, 2)
    label = SETUPS[missing][0]
    blind = [c for c in found.checks if c.agrees is None]
    assert blind and all(c.note == f"cannot compare: no column labelled {label}" for c in blind)
    assert found.held == "holds"  # judged on the checks it can make
