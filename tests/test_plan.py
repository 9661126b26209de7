"""The order cells run in: repeats interleaved, each repeat shuffled, reproducible by seed."""

from __future__ import annotations

from bench.runner import RunConfig, plan_cells
from bench.variants import discover


def plan(seed: int, repeats: int = 3) -> list[tuple[str, int]]:
    variants = list(discover().values())[:3]
    config = RunConfig(variants=[v.name for v in variants], repeats=repeats)
    return [(c.cell_id.rsplit("__r", 1)[0], c.repeat)
            for c in plan_cells(config, variants, seed)]


def test_every_cell_of_a_repeat_runs_before_the_next_repeat() -> None:
    cells = plan(7)
    per_repeat = len(cells) // 3
    assert per_repeat == 3 * 3 * 3  # 3 variants x 3 routes x 3 latencies
    for repeat in (1, 2, 3):
        block = cells[(repeat - 1) * per_repeat: repeat * per_repeat]
        assert {r for _, r in block} == {repeat}
        assert sorted(name for name, _ in block) == sorted(name for name, _ in cells[:per_repeat])


def test_repeats_are_shuffled_differently_and_never_back_to_back() -> None:
    for seed in range(50):
        cells = plan(seed)
        per_repeat = len(cells) // 3
        blocks = [[name for name, _ in cells[i * per_repeat:(i + 1) * per_repeat]]
                  for i in range(3)]
        assert blocks[0] != blocks[1] and blocks[1] != blocks[2]
        for a, b in zip(cells, cells[1:], strict=False):
            assert a[0] != b[0], (seed, a, b)  # the same cell twice in a row


def test_the_seed_reproduces_the_order() -> None:
    assert plan(123) == plan(123)
    assert plan(123) != plan(124)
