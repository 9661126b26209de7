"""The machine's own speed and noise, measured before the first cell (pyperf-style).

A fixed pure-Python loop (the same loop as the app's cpu/ route) is timed a few times on
the core the server will run on. Its median gives the machine's speed and its coefficient of
variation how noisy the machine was, at that moment. It no longer sizes the cpu/ loop:
these machines switch between a fast and a slow state (the 10^6 loop takes 50-60 or
90-100 ms) for seconds to minutes at a time, so a loop sized from one moment cost what the
next minutes made of it (cpu/ now has a CPU-time budget: bench/runner.py prepare_cpu_work).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

CALIBRATION_LOOP = 1_000_000
CALIBRATION_TIMES = 7
CELL_CALIBRATION_TIMES = 3  # before each cell: about 0.2 s, 15 s over a default run
NOISY_CV = 0.05  # a calibration spread above this is a noisy machine
STUDY_CPU_LOOP = 10**7
# The probe during a cell (bench/resources.py machine_probe_ms): a short loop on each
# core ten times a second, about 0.4 ms each, under 1% of the machine. These machines'
# speed moves within a tenth of a second (successive probes 0.1 s apart correlate at about
# 0.4, a second apart at about 0.1): one long probe a second samples a point of that and
# the second's mean is lost in its noise; twenty short ones a second average it.
PROBE_LOOP = 5_000
PROBE_INTERVAL_S = 0.1


def cpu_work(loop: int) -> int:
    """The app's cpu/ work (posts.validation.cpu_count), the same bytecode.

    Not imported from the app: that would load Django settings into the harness.
    """
    ct = 0
    for i in range(loop):
        ct += i * i
    return ct


def cpu_work_text(cpu_work: dict[str, Any] | None) -> str:
    """run.json's cpu_work in words: a CPU-time budget a request, or a fixed loop."""
    work = cpu_work or {}
    source = f" ({work['source']})" if work.get("source") else ""
    if work.get("ms"):
        return f"{work['ms']:g} ms of CPU a request{source}"
    if work.get("loop"):
        return f"a loop of {int(work['loop']):,} turns{source}"
    return "not recorded"


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


def probe_ms(cpus: list[int], loop: int = PROBE_LOOP) -> float | None:
    """The machine's speed now: the mean CPU time `cpu_work(loop)` takes on each of `cpus`,
    in ms per 50,000 turns (so probes of any loop size read alike).

    Thread CPU time, not wall time: while the cell's own processes hold a core, this
    thread's clock stops, so the figure moves only with how fast the core runs the loop.
    On these virtual machines that moves by up to 1.5x within seconds, with no steal
    reported: the host gives the vCPU's core to others (or its SMT sibling is busy), which
    the guest cannot see otherwise. Pins the calling thread only (restored afterwards).
    None if no CPU could be probed.
    """
    before = os.sched_getaffinity(0)
    samples = []
    try:
        for cpu in cpus:
            try:
                os.sched_setaffinity(0, [cpu])
            except OSError:
                continue
            t0 = time.thread_time()
            cpu_work(loop)
            samples.append((time.thread_time() - t0) * 1000 * 50_000 / loop)
    finally:
        os.sched_setaffinity(0, before)
    return round(statistics.fmean(samples), 3) if samples else None


class SpeedProbe:
    """`probe_ms` on `cpus` every PROBE_INTERVAL_S on its own thread, until stop().

    take() returns the mean of the probes since the last take() (None if none ran).
    """

    def __init__(self, cpus: list[int], interval_s: float = PROBE_INTERVAL_S,
                 loop: int = PROBE_LOOP) -> None:
        self.cpus, self.interval_s, self.loop = cpus, interval_s, loop
        self._samples: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speed-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = probe_ms(self.cpus, self.loop)
            if value is not None:
                with self._lock:
                    self._samples.append(value)

    def take(self) -> float | None:
        with self._lock:
            samples, self._samples = self._samples, []
        return round(statistics.fmean(samples), 4) if samples else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
