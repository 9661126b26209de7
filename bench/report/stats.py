"""Statistics of the report: steady sRPS with its 95% CI per (column, route, latency), the
flag for intervals too wide to trust, and the three-way interaction on log steady sRPS.

Across repeats the interval is Student t on the repeats' steady sRPS (n - 1 degrees of
freedom); with one repeat it is the cell's own batch-means interval (bench/steady.py,
k batches, k - 1 degrees of freedom). The interaction's interval is the delta method: each
cell's standard error is recovered from its interval (half-width / t quantile), divided by
the mean for the log scale, and the eight variances are summed (normal quantile).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from scipy import stats

from bench.report.data import CellRecord
from bench.steady import t_interval, t_quantile

CONFIDENCE = 0.95
WIDE_CI_FRACTION = 0.20

METHOD_REPEATS = "repeats"
METHOD_BATCHES = "batch means"
METHOD_NONE = "none"


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (None when there is none) and how it was obtained."""

    mean: float
    low: float | None
    high: float | None
    n: int
    df: int | None
    method: str
    unsteady: bool = False  # a repeat's series never settled (bench/steady.py)

    @property
    def wide(self) -> bool:
        return ci_too_wide(self.mean, self.low, self.high)

    @property
    def se(self) -> float | None:
        """The standard error implied by the interval."""
        if self.low is None or self.high is None or not self.df:
            return None
        return (self.high - self.low) / (2 * t_quantile(self.df))


def ci_too_wide(mean: float, low: float | None, high: float | None,
                fraction: float = WIDE_CI_FRACTION) -> bool:
    """True when the interval's full width exceeds `fraction` of the mean, or the mean is 0:
    a window without one success gives the interval [0, 0], which bounds nothing (seen:
    async_native cpu/ 200 ms in a default run, 0 successes in its 14 s window)."""
    if low is None or high is None:
        return False
    if mean <= 0:
        return True
    return high - low > fraction * mean


def ok_cells(cells: list[CellRecord]) -> list[CellRecord]:
    return [c for c in cells if c.status == "ok"]


def steady_estimate(cells: list[CellRecord]) -> Estimate | None:
    """Steady sRPS of one (column, route, latency) over its successful repeats."""
    values = [(c, v) for c in ok_cells(cells) if (v := c.metric("steady_srps")) is not None]
    if not values:
        return None
    unsteady = any(c.metrics.get("unsteady") is True for c, _ in values)
    if len(values) >= 2:
        numbers = [v for _, v in values]
        interval = t_interval(numbers)
        assert interval is not None
        return Estimate(statistics.fmean(numbers), interval[0], interval[1], len(numbers),
                        len(numbers) - 1, METHOD_REPEATS, unsteady)
    cell, value = values[0]
    ci = cell.ci95
    if ci is None:
        return Estimate(value, None, None, 1, None, METHOD_NONE, unsteady)
    batches = int(cell.metric("batches") or 5)  # format 1 cells: 5 batches
    return Estimate(value, ci[0], ci[1], 1, batches - 1, METHOD_BATCHES, unsteady)


def mean_metric(cells: list[CellRecord], name: str) -> float | None:
    """The mean of a metric over the successful repeats that have it."""
    values = [v for c in ok_cells(cells) if (v := c.metric(name)) is not None]
    return statistics.fmean(values) if values else None


@dataclass(frozen=True)
class Interaction:
    """The three-way interaction on log steady sRPS for one I/O route.

    value = [(log S_sync,io,high - log S_sync,io,low) - (log S_async,io,high - log
    S_async,io,low)] - [the same on cpu]. Negative: latency costs sync more than async on
    the I/O route, beyond what it costs each on cpu/.
    """

    io_route: str
    sync_column: str
    async_column: str
    low_ms: int
    high_ms: int
    sync_io_fold: float  # S(low) / S(high): how many times throughput is divided
    async_io_fold: float
    sync_cpu_fold: float
    async_cpu_fold: float
    value: float
    ci: tuple[float, float] | None
    floored: tuple[str, ...]  # cells whose zero throughput was replaced by the floor


Lookup = Callable[[str, str, int], Estimate | None]


def log_and_se(estimate: Estimate, floor: float) -> tuple[float, float | None, bool]:
    """log of the mean (floored above zero) and its delta-method standard error."""
    floored = estimate.mean <= 0
    mean = max(estimate.mean, floor)
    se = estimate.se
    return math.log(mean), (None if se is None else se / mean), floored


def interaction(lookup: Lookup, sync_column: str, async_column: str, io_route: str,
                low_ms: int, high_ms: int, floor: float) -> Interaction | str:
    """The interaction, or one sentence saying which cell is missing."""
    logs: dict[tuple[str, str, int], float] = {}
    variance = 0.0
    have_se = True
    floored: list[str] = []
    for column in (sync_column, async_column):
        for route in (io_route, "cpu"):
            for latency in (low_ms, high_ms):
                estimate = lookup(column, route, latency)
                if estimate is None:
                    return (f"needs a successful {column} {route}/ cell at {latency} ms, "
                            "which this run does not have")
                value, se, was_floored = log_and_se(estimate, floor)
                logs[column, route, latency] = value
                if was_floored:
                    floored.append(f"{column} {route}/ {latency} ms")
                if se is None:
                    have_se = False
                else:
                    variance += se * se

    def change(column: str, route: str) -> float:
        return logs[column, route, high_ms] - logs[column, route, low_ms]

    value = (change(sync_column, io_route) - change(async_column, io_route)) - (
        change(sync_column, "cpu") - change(async_column, "cpu"))
    ci = None
    if have_se:
        half = float(stats.norm.ppf((1 + CONFIDENCE) / 2)) * math.sqrt(variance)
        ci = (value - half, value + half)
    return Interaction(
        io_route, sync_column, async_column, low_ms, high_ms,
        sync_io_fold=math.exp(-change(sync_column, io_route)),
        async_io_fold=math.exp(-change(async_column, io_route)),
        sync_cpu_fold=math.exp(-change(sync_column, "cpu")),
        async_cpu_fold=math.exp(-change(async_column, "cpu")),
        value=value, ci=ci, floored=tuple(floored))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class RepeatPair:
    """Two repeats of one cell: how far apart they landed, in combined standard errors.

    `z` compares the two figures as measured. `speed_z` compares them at the same machine
    speed: the second repeat moved to the first one's probe along the cells' own slope of
    throughput on speed (bench/metrics.py speed_metrics, a control variate, corrected for
    the probe's noise by pooled_slope), whose standard error is added to the combined
    one. None where a cell has no probe or slope.
    """

    column: str
    route: str
    latency_ms: int
    repeats: tuple[int, int]
    values: tuple[float, float]
    z: float
    # The CPU loop timed before each of the two cells (cell.json machine_loop_ms).
    loop_ms: tuple[float | None, float | None] = (None, None)
    # The machine's speed during each cell's window (metrics machine_probe_ms).
    probe_ms: tuple[float | None, float | None] = (None, None)
    speed_z: float | None = None

    @property
    def machine_change(self) -> float | None:
        """How much the machine's speed changed between the two cells: |b/a - 1|, from the
        probe during the cells where both have one, else from the loop timed before."""
        a, b = self.probe_ms if all(self.probe_ms) else self.loop_ms
        return abs(b / a - 1) if a and b else None


CALIBRATION_Z = 2.5


def cell_se(cell: CellRecord) -> float | None:
    """A cell's own standard error of its steady sRPS (its interval over its t quantile)."""
    ci = cell.ci95
    batches = cell.metric("batches") or 5
    if ci is None or batches < 2:
        return None
    return (ci[1] - ci[0]) / 2 / t_quantile(int(batches) - 1)


def pair_z(a: CellRecord, b: CellRecord) -> float | None:
    """|difference| / sqrt(se_a^2 + se_b^2) of two cells' steady sRPS, from their own
    intervals; None where either lacks a value or an interval."""
    va, vb = a.metric("steady_srps"), b.metric("steady_srps")
    sa, sb = cell_se(a), cell_se(b)
    if va is None or vb is None or sa is None or sb is None:
        return None
    return _z(va - vb, math.hypot(sa, sb))


def repeat_pairs(cells: list[CellRecord]) -> list[RepeatPair]:
    """Every pair of successful repeats of each (column, route, latency), with
    z = |difference| / sqrt(se_a^2 + se_b^2) from the cells' own intervals."""
    groups: dict[tuple[str, str, int], list[CellRecord]] = {}
    for cell in ok_cells(cells):
        groups.setdefault((cell.column, cell.route, cell.latency_ms), []).append(cell)
    pairs = []
    for (column, route, latency), members in groups.items():
        members.sort(key=lambda c: c.repeat)
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                va, vb = a.metric("steady_srps"), b.metric("steady_srps")
                sa, sb = cell_se(a), cell_se(b)
                if va is None or vb is None or sa is None or sb is None:
                    continue
                se = math.hypot(sa, sb)
                z = _z(va - vb, se)
                probes = (a.metric("machine_probe_ms"), b.metric("machine_probe_ms"))
                pairs.append(RepeatPair(column, route, latency, (a.repeat, b.repeat),
                                        (va, vb), z, (a.machine_loop_ms, b.machine_loop_ms),
                                        probes, _speed_z([a, b], probes, va - vb, se)))
    return pairs


def _z(difference: float, se: float) -> float:
    return abs(difference) / se if se > 0 else (0.0 if difference == 0 else math.inf)


# The pooled reliability below which the slope is not corrected further: the probe's noise
# would then be most of its spread, and dividing by it would make the slope up.
MIN_RELIABILITY = 0.25


def pooled_slope(cells: list[CellRecord]) -> tuple[float, float] | None:
    """The cells' slopes of sRPS on machine speed, pooled, with the pooled standard error;
    None where no cell has one.

    Where every such cell has its speed_sxx and speed_reliability (bench/metrics.py
    speed_metrics), the slope is corrected for the probe's own noise (regression
    dilution): sum(slope * sxx) / sum(reliability * sxx), the pooled reliability held at
    MIN_RELIABILITY or above, and the standard error divided by the same share. Cells
    recorded before those fields: pooled by inverse variance, uncorrected."""
    weights = slope = 0.0
    covariance = spread = kept = 0.0
    corrected = True
    for cell in cells:
        value, se = cell.metric("speed_slope"), cell.metric("speed_slope_se")
        if value is None or not se:
            continue
        weights += 1 / se**2
        slope += value / se**2
        sxx, reliability = cell.metric("speed_sxx"), cell.metric("speed_reliability")
        if sxx is None or reliability is None:
            corrected = False
            continue
        covariance += value * sxx
        spread += sxx
        kept += reliability * sxx
    if not weights:
        return None
    pooled, se = slope / weights, math.sqrt(1 / weights)
    if not corrected or spread <= 0:
        return pooled, se
    share = max(kept / spread, MIN_RELIABILITY)
    return covariance / spread / share, se / share


def _speed_z(cells: list[CellRecord], probes: tuple[float | None, float | None],
             difference: float, se: float) -> float | None:
    """z of the difference once the second cell is moved to the first one's machine speed
    along the pooled slope."""
    pa, pb = probes
    slope = pooled_slope(cells)
    if pa is None or pb is None or slope is None:
        return None
    shift = pa - pb
    return _z(difference - slope[0] * shift, math.hypot(se, shift * slope[1]))


def calibration_sentence(pairs: list[RepeatPair]) -> str | None:
    """Did the within-cell intervals predict where the repeats landed?"""
    if not pairs:
        return None
    beyond = [p for p in pairs if p.z > CALIBRATION_Z]
    median_z = statistics.median(p.z for p in pairs)
    honest = _honest([p.z for p in pairs])
    verdict = ("the within-cell intervals agree with the repeat-to-repeat spread"
               if honest else
               "the within-cell intervals understate the repeat-to-repeat spread: trust the "
               "intervals across repeats, not a single cell's")
    sentence = (f"Calibration: of {len(pairs)} pairs of repeats of the same cell, "
                f"{len(beyond)} landed more than {CALIBRATION_Z} combined standard errors "
                f"apart (median z {median_z:.2f}; for honest intervals about 1% and 0.67): "
                f"{verdict}.")
    changes = [p.machine_change for p in pairs if p.machine_change is not None]
    probed = all(all(p.probe_ms) for p in pairs)
    if changes:
        apart = [c for p in beyond if (c := p.machine_change) is not None]
        how = ("The machine's speed during each cell (a CPU probe ten times a second)" if probed
               else "The machine's CPU loop, timed before each cell,")
        sentence += (f" {how} differed between "
                     f"the two repeats by a median of {100 * statistics.median(changes):.0f}%"
                     + (f" ({100 * statistics.median(apart):.0f}% in the pairs beyond "
                        f"{CALIBRATION_Z})" if apart else "")
                     + f", up to {100 * max(changes):.0f}%"
                     + (": a machine whose speed drifts moves the repeats apart by more "
                        "than any one cell can see." if apart else "."))
    speed = [p.speed_z for p in pairs if p.speed_z is not None]
    if speed and len(speed) == len(pairs):
        beyond_speed = sum(z > CALIBRATION_Z for z in speed)
        sentence += (f" Compared at the same machine speed (each cell's slope of throughput "
                     f"on the probe, corrected for the probe's noise), {beyond_speed} of "
                     f"{len(pairs)} pairs landed more than {CALIBRATION_Z} apart "
                     f"(median z {statistics.median(speed):.2f})")
        sentence += (": the cells' intervals hold for the machine they ran on, and its speed "
                     "moved the repeats apart." if _honest(speed) and not honest else ".")
    return sentence


def _honest(zs: list[float]) -> bool:
    """z of pairs of honest estimates: |N(0,1)|, median 0.67, above 2.5 in 1.2% of pairs;
    at most 5% (or one) of them beyond CALIBRATION_Z, and a median below 1.2."""
    return (sum(z > CALIBRATION_Z for z in zs) <= max(1, round(0.05 * len(zs)))
            and statistics.median(zs) < 1.2)
