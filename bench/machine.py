"""The machine's own speed and noise, measured before the first cell (pyperf-style).

A fixed pure-Python loop (the same loop as the app's cpu/ route) is timed a few times on
the core the server will run on. Its median gives the machine's speed; its coefficient of
variation how noisy the machine was; and it sizes the cpu/ loop so that one request costs
a given time (the study's Sync did 1.5 sRPS on cpu/: about 0.67 s a request).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

CALIBRATION_LOOP = 1_000_000
CALIBRATION_TIMES = 7
CELL_CALIBRATION_TIMES = 3  # before each cell: about 0.2 s, 15 s over a default run
NOISY_CV = 0.05  # a calibration spread above this is a noisy machine
STUDY_CPU_LOOP = 10**7


def cpu_work(loop: int) -> int:
    """The app's cpu/ work (posts.validation.cpu_count), the same bytecode.

    Not imported from the app: that would load Django settings into the harness.
    """
    ct = 0
    for i in range(loop):
        ct += i * i
    return ct


@dataclass(frozen=True)
class Calibration:
    loop: int
    samples_ms: list[float]
    cpus: list[int]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def cv(self) -> float:
        mean = statistics.fmean(self.samples_ms)
        return statistics.stdev(self.samples_ms) / mean if len(self.samples_ms) > 1 else 0.0

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    def loop_for(self, target_ms: float) -> int:
        """The loop size that takes `target_ms` on this machine."""
        return max(1, round(target_ms / self.median_ms * self.loop))

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_ms=round(self.median_ms, 3), cv=round(self.cv, 4), noisy=self.noisy)
        return data


def calibrate(cpus: list[int] | None = None, loop: int = CALIBRATION_LOOP,
              times: int = CALIBRATION_TIMES) -> Calibration:
    """Time `cpu_work(loop)` `times` times, pinned to `cpus` (restored afterwards)."""
    before = os.sched_getaffinity(0)
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        cpu_work(loop // 10)  # warm up
        samples = []
        for _ in range(times):
            t0 = time.perf_counter()
            cpu_work(loop)
            samples.append(round((time.perf_counter() - t0) * 1000, 3))
    finally:
        os.sched_setaffinity(0, before)
    return Calibration(loop, samples, sorted(cpus or before))
