"""The steady state of a cell's throughput: where its warm-up ends, and an honest interval.

Input: the times at which successful responses ended (seconds since the load started),
counted in bins of BIN_S seconds. Both the runner (live, to decide when to stop) and the
cell's final metrics go through `analyse`, so the interval that stopped a cell is the one
it reports.

Warm-up: MSER-5 (White 1997, "An effective truncation heuristic for bias reduction in
simulation output"; White, Cobb & Spratt 2000). Bins are averaged in batches of 5; the
truncation point d minimises the squared standard error of the mean of what is left,
    MSER(d) = sum_{i>d} (Y_i - mean_{>d})^2 / (k - d)^2 ,
searched over the first half of the series (MSER's statistic has spurious minima near the
end, where few batches are left). MSER is written here: the one package on PyPI
(`pymser`) requires torch, and the rule is a few lines of numpy.

The statistic is flat after a warm-up and noisy, so the earliest point within its noise of
the minimum (relative 1/sqrt(batches left)) is taken, not the minimum itself, which noise
put several seconds late in simulated steps. Two checks, each a two-sample z on the
batch-means standard error (the idea of Schruben's 1982 initialization-bias test): MSER's
truncation is kept only when what it drops differs from the rest (on a series with no
warm-up MSER only drops data, and biases the mean towards what followed a chance
excursion), and a window whose two halves still differ (|z| > HALVES_Z) is `unsteady`: a
trend, or a warm-up that is not over.

Interval: non-overlapping batch means, batches doubled until their means are not
autocorrelated, as Fishman & Yarberry's LBATCH does (1997, "An implementation of the
batch means method"): the von Neumann test of the batch means' lag-1 correlation, with at
least MIN_BATCHES batches. Student t on the accepted batches. The test runs at
alpha = 0.25, not LBATCH's 0.10: with 10-20 batches a 0.10 test misses the correlation
that made intervals too narrow in simulation (tests/test_steady.py measures coverage).
statsmodels would give the autocorrelation, but the test is one line of numpy and
statsmodels is a 40 MB dependency for it. `t_interval` here is the project's one
Student-t interval (repeats in the report use it too).

Low rates: counted in 0.25-s bins, a cell that ends a request every 0.67 s (cpu/, or one
sync worker at 100 ms) is a series of 0s and 1s whose batch counts are mostly rounding:
a 1.25-s batch holds one or two successes, the batch means scatter by a third of the rate
while the rate itself is nearly constant (three runs of sync_gunicorn cpu/ agreed within
5% where their intervals said ±35%). Below LOW_RATE_PER_BIN successes a bin, the window's
rate is estimated from the times between successes instead: the same LBATCH batch means,
on the gaps (batches of consecutive gaps, doubled until uncorrelated), the rate is the
reciprocal of the mean gap and its interval the reciprocal of the mean gap's (a monotone
map keeps the coverage). That is the renewal view of a point process's rate (Cox & Lewis
1966, *The Statistical Analysis of Series of Events*, ch. 2); counting in bins loses what
the completion times say between the bin edges. The gaps' interval is kept where it is the
narrower of the two: an event loop that answers four requests at once leaves gaps of 0, 0,
0 and 3.6 s, whose short batches are far from normal and whose interval is wider than the
bins'. In simulation (tests/test_steady.py) one worker ending a request every 0.67 s
(CV 3%) over a 14-s window got ±1.6% from the gaps against ±35% from the bins, covering
the true rate in 98.5% of 200 series, and a Poisson stream of 1.5/s, where neither is
better, 92% with the choice (94% from the bins alone). MSER and the halves test stay on the bins.

No interval is narrower than MIN_RELATIVE_HALF_WIDTH of its rate. A cell's own data cannot
see how its rerun will differ: three runs of sync_gunicorn cpu/ 0 ms gave 1.477, 1.482 and
1.484 sRPS from the gaps with ±0.4%, ±0.3% and ±0.1%, so z of 1.8 to 2.9 between runs
whose spread was half a percent (benchmarks/cpu_work.py). The floor is far below the
precision a cell stops on (5%); it only keeps a regular cell from claiming a rerun must
land within a tenth of a percent.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

# scipy.stats is imported where a quantile is needed: it takes about a second to import,
# and every `bench` command imports this module (bench.runner -> bench.metrics), also the
# ones that only print an error.

BIN_S = 0.25  # bin of the success-count series (MSER-5 batches are 5 bins: 1.25 s)
MSER_BATCH = 5
MSER_TOLERANCE = 1.0
MIN_BATCHES = 10  # fewest batch means an accepted interval is built from
FALLBACK_BATCHES = 5  # fewest batch means of an interval that failed the test
PLATEAU_LEVELS = 1  # larger batch sizes whose half-width may widen the accepted one
VON_NEUMANN_ALPHA = 0.25
CONFIDENCE = 0.95
HALVES_Z = 3.0  # the window's two halves may differ by this many standard errors
BIAS_Z = 3.0  # what MSER drops must differ from the rest by more than this
LOW_RATE_PER_BIN = 1.0  # below this many successes a bin, the interval is from the gaps
MIN_RELATIVE_HALF_WIDTH = 0.01  # no interval claims less (module docstring)
METHOD_BINS = "bins"  # batch means of successes per bin
METHOD_GAPS = "gaps"  # batch means of the times between successes (low rates)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    from scipy import stats

    return float(stats.t.ppf((1 + confidence) / 2, df))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE
               ) -> tuple[float, float] | None:
    """Student-t interval of the mean of independent `values` (None for fewer than two)."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1, confidence) * statistics.stdev(values) / math.sqrt(
        len(values))
    return mean - half, mean + half


def bin_counts(times_s: Sequence[float] | np.ndarray, start_s: float, end_s: float,
               bin_s: float = BIN_S) -> np.ndarray:
    """Successes per bin over [start_s, end_s), whole bins only."""
    bins = int(math.floor((end_s - start_s) / bin_s + 1e-9))
    if bins <= 0:
        return np.zeros(0)
    edges = start_s + bin_s * np.arange(bins + 1)
    counts, _ = np.histogram(np.asarray(times_s, dtype=float), bins=edges)
    return counts.astype(float)


def mser_truncation(series: np.ndarray, batch: int = MSER_BATCH) -> tuple[int, bool]:
    """(observations to drop, long enough) by MSER-`batch` on `series`.

    The search covers the first half of the series: MSER's statistic has spurious minima
    near the end, where few batches are left. A warm-up that lasts longer than half the
    series is caught by the halves test in `analyse_series`. Fewer than 10 batches: (0,
    False).
    """
    k = len(series) // batch
    if k < 10:
        return 0, False
    means = series[: k * batch].reshape(k, batch).mean(axis=1)
    tail = means[::-1]
    m = np.arange(1, k + 1, dtype=float)  # batches kept when dropping k - m
    s1 = np.cumsum(tail)
    s2 = np.cumsum(tail * tail)
    sse = np.maximum(s2 - s1 * s1 / m, 0.0)
    mser = (sse / (m * m))[::-1]  # index d: drop d batches
    first_half = mser[: k // 2 + 1]
    best = int(np.argmin(first_half))
    # The statistic is flat after the warm-up and noisy: take the earliest point whose
    # value is within its noise (a relative 1/sqrt(batches left)) of the minimum.
    tolerance = first_half[best] * (1 + MSER_TOLERANCE / np.sqrt(k - best))
    d = int(np.argmax(first_half <= tolerance))
    return d * batch, True


@dataclass(frozen=True)
class BatchMeans:
    mean: float  # the window's rate (successes / window length)
    low: float | None
    high: float | None
    batch_s: float
    batches: int
    lag1: float | None  # lag-1 autocorrelation of the accepted batch means
    independent: bool  # the von Neumann test accepted the batches
    method: str = METHOD_BINS  # what was batched: successes per bin, or gaps (low rates)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def relative_half_width(self) -> float | None:
        half = self.half_width
        if half is None:
            return None
        return half / self.mean if self.mean > 0 else math.inf


def lag1(values: np.ndarray) -> float:
    centred = values - values.mean()
    denominator = float(np.dot(centred, centred))
    return float(np.dot(centred[:-1], centred[1:]) / denominator) if denominator > 0 else 0.0


def von_neumann_correlated(values: np.ndarray, alpha: float | None = None) -> bool:
    """True when the lag-1 correlation of `values` is significantly positive.

    C = 1 - sum (y_{i+1} - y_i)^2 / (2 sum (y_i - mean)^2) is about normal with mean 0 and
    variance (k - 2) / (k^2 - 1) for independent values (von Neumann 1941).
    """
    alpha = VON_NEUMANN_ALPHA if alpha is None else alpha
    k = len(values)
    centred = values - values.mean()
    denominator = float(np.dot(centred, centred))
    if denominator == 0:
        return False
    c = 1 - float(np.sum(np.diff(values) ** 2)) / (2 * denominator)
    from scipy import stats

    return c > float(stats.norm.ppf(1 - alpha)) * math.sqrt((k - 2) / (k * k - 1))


def _batch_interval(series: np.ndarray, b: int, bin_s: float) -> tuple[np.ndarray, float]:
    """The latest k*b bins as k batch means (rates), and the 95% half-width of their mean."""
    n = len(series)
    k = n // b
    # The latest k*b bins: the few dropped are next to the warm-up.
    means = series[n - k * b:].reshape(k, b).sum(axis=1) / (b * bin_s)
    return means, t_quantile(k - 1) * float(means.std(ddof=1)) / math.sqrt(k)


def batch_means(series: np.ndarray, bin_s: float = BIN_S, min_batches: int = MIN_BATCHES
                ) -> BatchMeans:
    """Rate of `series` (counts per bin) with its 95% batch-means interval.

    The batch size doubles until the batch means pass the von Neumann test with at least
    `min_batches` batches; the half-width is then the larger of that size's and the next
    one's (while it has FALLBACK_BATCHES batches), since a standard error computed from
    batches that are still correlated is too small and grows with the batch size until
    they are not (Flyvbjerg & Petersen 1989, "Error estimates on averages of correlated
    data"): a test that accepted too early costs width, not coverage. When no size passes,
    the batches keep doubling down to FALLBACK_BATCHES: a wider interval, marked not
    independent.
    """
    n = len(series)
    mean = float(series.sum() / (n * bin_s)) if n else 0.0
    b = 1
    found: BatchMeans | None = None
    while n // b >= FALLBACK_BATCHES:
        means, half = _batch_interval(series, b, bin_s)
        correlated = von_neumann_correlated(means)
        if not correlated and len(means) >= min_batches:
            for level in range(1, PLATEAU_LEVELS + 1):
                if n // (b << level) >= FALLBACK_BATCHES:
                    half = max(half, _batch_interval(series, b << level, bin_s)[1])
            return BatchMeans(mean, mean - half, mean + half, b * bin_s, len(means),
                              lag1(means), True)
        found = BatchMeans(mean, mean - half, mean + half, b * bin_s, len(means), lag1(means),
                           False)
        b *= 2
    if found is None:
        return BatchMeans(mean, None, None, 0.0, 0, None, False)
    return found


@dataclass(frozen=True)
class SteadyState:
    warmup_s: float  # seconds from the start of the load to the start of the window
    end_s: float
    settled: bool  # MSER found the warm-up's end in the first half
    estimate: BatchMeans
    drift: float | None  # (second half - first half) / mean over the window

    @property
    def window_s(self) -> float:
        return self.end_s - self.warmup_s

    def precise(self, precision: float) -> bool:
        rel = self.estimate.relative_half_width
        return (self.settled and self.estimate.independent and rel is not None
                and rel <= precision)


def segment_z(dropped: np.ndarray, kept: np.ndarray, bin_s: float = BIN_S) -> float:
    """(kept's mean - dropped's) / its standard error, both from the kept part's
    batch-means variance (the dropped part is too short to have its own)."""
    estimate = batch_means(kept, bin_s)
    half_width = estimate.half_width
    if half_width is None or not len(dropped) or estimate.batches < 2:
        return math.inf
    # the long-run variance of one bin's count, from the kept part's standard error
    per_bin = (half_width / t_quantile(estimate.batches - 1) * bin_s) ** 2 * len(kept)
    se = math.sqrt(per_bin / len(kept) + per_bin / len(dropped))
    diff = float(kept.mean() - dropped.mean())
    if se <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


def halves_z(window: np.ndarray, estimate: BatchMeans, bin_s: float = BIN_S) -> float | None:
    """(second half's rate - first half's) / its standard error.

    The standard error comes from the batch means' mean square successive difference (von
    Neumann 1941), not their variance: a trend inflates the variance of the batch means,
    and would hide itself, but barely their successive differences.
    """
    b = int(round(estimate.batch_s / bin_s))
    k = len(window) // b if b else 0
    if k < 4:
        return None
    means = window[len(window) - k * b:].reshape(k, b).sum(axis=1) / (b * bin_s)
    variance = float(np.sum(np.diff(means) ** 2)) / (2 * (k - 1))
    first, second = means[: k // 2].mean(), means[k - k // 2:].mean()
    se = math.sqrt(variance / (k // 2) * 2)
    if se <= 0:
        return 0.0 if first == second else math.copysign(math.inf, second - first)
    return float((second - first) / se)


def gap_estimate(success_times_s: Sequence[float] | np.ndarray, start_s: float, end_s: float
                 ) -> BatchMeans | None:
    """The rate of the successes in [start_s, end_s) from the times between them: LBATCH
    batch means of the gaps, rate = 1 / mean gap, interval = 1 / the mean gap's (module
    docstring). None with fewer than MIN_BATCHES gaps, or a gap interval that reaches 0
    (no finite upper bound on the rate)."""
    times = np.sort(np.asarray(success_times_s, dtype=float))
    times = times[(times >= start_s) & (times < end_s)]
    gaps = np.diff(times)
    if len(gaps) < MIN_BATCHES:
        return None
    est = batch_means(gaps, bin_s=1.0)  # bin_s 1: plain means of the gaps, in seconds
    if est.low is None or est.high is None or est.low <= 0:  # low > 0: so is the mean
        return None
    return BatchMeans(1 / est.mean, 1 / est.high, 1 / est.low, est.batch_s * est.mean,
                      est.batches, est.lag1, est.independent, METHOD_GAPS)


def analyse(success_times_s: Sequence[float] | np.ndarray, ramp_s: float, end_s: float,
            bin_s: float = BIN_S) -> SteadyState:
    """The steady window of the successes in [ramp_s, end_s) and its rate's interval: batch
    means of the bins, or, where successes are fewer than LOW_RATE_PER_BIN a bin, of the
    gaps between them when that interval is the narrower (module docstring)."""
    state = analyse_series(bin_counts(success_times_s, ramp_s, end_s, bin_s), ramp_s, bin_s)
    if state.window_s > 0 and state.estimate.mean * bin_s < LOW_RATE_PER_BIN:
        gaps = gap_estimate(success_times_s, state.warmup_s, state.end_s)
        bins = state.estimate.half_width
        if gaps is not None and (bins is None or (gaps.half_width or 0) < bins):
            state = replace(state, estimate=gaps)
    return replace(state, estimate=floored(state.estimate))


def floored(est: BatchMeans) -> BatchMeans:
    """`est` with its interval widened, around its own centre, to at least
    MIN_RELATIVE_HALF_WIDTH of the rate (module docstring)."""
    half = est.half_width
    least = MIN_RELATIVE_HALF_WIDTH * est.mean
    if half is None or est.low is None or est.high is None or half >= least:
        return est
    grow = least - half
    return replace(est, low=est.low - grow, high=est.high + grow)


def analyse_series(series: np.ndarray, start_s: float = 0.0, bin_s: float = BIN_S
                   ) -> SteadyState:
    """The steady window of `series` (successes per bin, from `start_s`).

    MSER-5 proposes where the warm-up ends, kept only when the part it drops differs from
    the rest (|z| > BIAS_Z). The window is settled when its two halves agree (|z| <=
    HALVES_Z).
    """
    drop, settled = mser_truncation(series)
    if drop and abs(segment_z(series[:drop], series[drop:], bin_s)) <= BIAS_Z:
        # What MSER would drop is no different from the rest: dropping it would only lose
        # data and bias the mean towards whatever followed a chance excursion.
        drop = 0
    window = series[drop:]
    estimate = batch_means(window, bin_s)
    z = halves_z(window, estimate, bin_s)
    if z is None or abs(z) > HALVES_Z:
        settled = False  # the window still drifts: a trend, or a warm-up not over yet
    warmup_s = start_s + drop * bin_s
    end = warmup_s + len(window) * bin_s
    drift = None
    if len(window) >= 2 and estimate.mean > 0:
        half = len(window) // 2
        first, second = window[:half].mean(), window[half: 2 * half].mean()
        drift = float((second - first) / (window.mean()))
    return SteadyState(round(warmup_s, 3), round(end, 3), settled, estimate, drift)
