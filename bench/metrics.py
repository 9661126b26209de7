"""A cell's metrics from its files: responses.csv (one row per request), Locust's
stats_history.csv and resources.csv. Definitions are in results/README.md.

- max_srps: the study's metric, max over Locust's history of Requests/s - Failures/s.
- total_successes: the study's other metric, over the whole run.
- steady_srps: successes per second over the steady window, which starts where MSER-5
  finds the end of the warm-up and ends where the load was stopped; its 95% CI by batch
  means whose batches pass a lag-1 autocorrelation test (bench/steady.py).
- p50/p95/p99: response times of the requests ending in the steady window.
- in-flight requests (Little's law): the sum of the window's response times / its length.
- the machine's speed during the window (resources.csv machine_probe_ms, bench/machine.py
  SpeedProbe) and how the cell's throughput moved with it: the least-squares slope of
  SPEED_BATCH_S batch rates on the batch's mean probe, with its standard error. That slope
  is the control variate of the simulation literature (Lavenberg & Welch 1981, "A
  perspective on the use of control variables to increase the efficiency of Monte Carlo
  simulations"; Law, "Simulation Modeling and Analysis", ch. 11): the report uses it to
  compare two repeats at the same machine speed (bench/report/stats.py repeat_pairs).
  A batch's mean probe is itself a noisy measure of the batch's speed, and that noise
  flattens the slope (regression dilution: Fuller, "Measurement Error Models", 1987,
  section 1.1; Frost & Thompson, JRSS A 163, 2000). Each cell therefore also records
  speed_sxx, the spread of its batch probes, and speed_reliability, the share of that
  spread left once the probe's own noise (each batch's variance of its one-second
  probes over their count) is taken out; the report divides the pooled slope by the
  pooled share. Written here in closed form: one regressor, and statsmodels (no
  measurement-error regression either) is a 40 MB dependency for a slope and its
  standard error.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import Profile
from bench.record import CellMetrics
from bench.requestlog import Responses, read_responses
from bench.results import read_csv, to_float
from bench.steady import METHOD_GAPS, SteadyState, analyse

SATURATED_CPU_PCT = 90.0
# two resources.csv rows (each the mean of ~10 probes) per batch, so that a quick
# profile's 12-14 s window still has a slope. Over 6 stored calibration runs (68 cells; 15
# kinds whose throughput moves with speed), the pooled within-cell slope, corrected, came
# out at a median of 1.15x the slope between the repeats of the same kind (0.32-1.80x),
# uncorrected at 0.56x (0.06-1.25x); with 4-s batches, 0.99x and 0.58x.
SPEED_BATCH_S = 2.0
SPEED_MIN_BATCHES = 6
CI_METHOD = "batch means, lag-1 tested (LBATCH), after MSER-5 truncation"
CI_METHOD_GAPS = ("batch means of the times between successes, lag-1 tested (LBATCH), "
                  "after MSER-5 truncation")


def steady_metrics(state: SteadyState) -> dict[str, Any]:
    est = state.estimate
    rel = est.relative_half_width
    return {
        "steady_srps": round(est.mean, 3),
        "steady_srps_ci95": None if est.low is None or est.high is None else [
            round(est.low, 3), round(est.high, 3)],
        "steady_half_width_pct": None if rel is None else round(100 * rel, 2),
        "ci_method": CI_METHOD_GAPS if est.method == METHOD_GAPS else CI_METHOD,
        "batch_s": est.batch_s, "batches": est.batches,
        "batch_lag1": None if est.lag1 is None else round(est.lag1, 3),
        "batches_independent": est.independent,
        "warmup_s": state.warmup_s, "window_s": round(state.window_s, 3),
        "unsteady": not state.settled,
        "drift_pct": None if state.drift is None else round(100 * state.drift, 1),
    }


def response_metrics(responses: Responses, ramp_s: float, end_s: float) -> dict[str, Any]:
    """Totals over the whole run; steady figures over the steady window of [ramp_s, end_s)."""
    if not len(responses):
        # No request ended: the window measured 0 sRPS (whether that is a result or a load
        # that never ran is the runner's call: bench/runner.py empty_load_reason).
        return {"total_requests": 0, "total_successes": 0, "total_failures": 0,
                "failures_by_kind": {},
                **steady_metrics(analyse(responses.success_times(), ramp_s, end_s))}
    successes = int(responses.ok.sum())
    kinds = Counter(kind or "unknown" for kind, ok in zip(responses.kind, responses.ok,
                                                          strict=True) if not ok)
    state = analyse(responses.success_times(), ramp_s, end_s)
    metrics: dict[str, Any] = {
        "total_requests": len(responses), "total_successes": successes,
        "total_failures": len(responses) - successes,
        "failures_by_kind": dict(kinds.most_common()),
        **steady_metrics(state),
    }
    in_window = (responses.t_s >= state.warmup_s) & (responses.t_s < state.end_s)
    window_times = responses.response_time_ms[in_window]
    if state.window_s > 0:
        metrics["mean_in_flight"] = round(float(window_times.sum()) / 1000 / state.window_s, 2)
        failed = int((~responses.ok[in_window]).sum())
        metrics["steady_failures_per_s"] = round(failed / state.window_s, 3)
    if len(window_times):
        p50, p95, p99 = np.percentile(window_times, [50, 95, 99])
        metrics.update(p50_ms=round(float(p50), 1), p95_ms=round(float(p95), 1),
                       p99_ms=round(float(p99), 1))
    return metrics


def history_metrics(path: Path) -> dict[str, Any]:
    best: float | None = None
    for row in read_csv(path):
        if row.get("Name") != "Aggregated":
            continue
        rps, fps = to_float(row.get("Requests/s")), to_float(row.get("Failures/s"))
        if rps is None:
            continue
        value = rps - (fps or 0.0)
        best = value if best is None else max(best, value)
    return {"max_srps": round(best, 2)} if best is not None else {}


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 1) if values else None


def resource_rows(path: Path) -> list[dict[str, float | None]]:
    """resources.csv as numbers (read once per cell: resource_metrics and speed_metrics)."""
    return [{k: to_float(v) for k, v in row.items()} for row in read_csv(path)]


def resource_metrics(rows: list[dict[str, float | None]], window_start_s: float
                     ) -> dict[str, Any]:
    if not rows:
        return {}

    def col(name: str, selected: list[dict[str, float | None]] = rows) -> list[float]:
        return [v for r in selected if (v := r.get(name)) is not None]

    def peak(name: str) -> float | None:
        values = col(name)
        return max(values) if values else None

    window = [r for r in rows if (r.get("t_s") or 0) >= window_start_s] or rows
    locust_cpu = col("locust_cpu_pct")
    # A 3-second moving average, so one noisy sample does not flag a cell.
    smooth = [statistics.fmean(locust_cpu[i:i + 3]) for i in range(max(len(locust_cpu) - 2, 1))
              ] if locust_cpu else []
    # The deployment's memory: server, PostgreSQL, and PgBouncer where it has one; rows
    # where neither the server nor PostgreSQL was measured (a --target's) are left out.
    combined = [(r.get("server_rss_mib") or 0) + (r.get("db_rss_mib") or 0)
                + (r.get("pgbouncer_rss_mib") or 0) for r in rows
                if r.get("server_rss_mib") is not None or r.get("db_rss_mib") is not None]
    return {
        "peak_server_rss_mib": peak("server_rss_mib"),
        "mean_server_cpu_pct": _mean(col("server_cpu_pct", window)),
        "peak_server_threads": _int(peak("server_threads")),
        "peak_db_connections": _int(peak("db_connections")),
        "peak_db_rss_mib": peak("db_rss_mib"),
        "peak_server_db_rss_mib": round(max(combined), 2) if combined else None,
        "baseline_server_db_rss_mib": round(combined[0], 2) if combined else None,
        "mean_locust_cpu_pct": _mean(locust_cpu),
        "peak_locust_cpu_pct": round(max(smooth), 1) if smooth else None,
        "load_generator_saturated": bool(smooth) and max(smooth) > SATURATED_CPU_PCT,
        "mean_steal_pct": _mean(col("steal_pct", window)),
        "mean_outside_cpu_pct": _mean(col("outside_cpu_pct", window)),
        "peak_pgbouncer_rss_mib": peak("pgbouncer_rss_mib"),
        "peak_pgbouncer_clients": _int(peak("pgbouncer_clients")),
        "peak_pgbouncer_servers": _int(peak("pgbouncer_servers")),
    }


def speed_metrics(success_times_s: np.ndarray, rows: list[dict[str, float | None]],
                  start_s: float, end_s: float) -> dict[str, Any]:
    """The machine's speed over [start_s, end_s) and the throughput's slope on it.

    machine_probe_ms: the mean probe (ms of thread CPU time for a fixed loop; higher is a
    slower machine). speed_slope: sRPS per ms of probe, from batches of SPEED_BATCH_S s
    (negative when a slower machine served fewer requests), and speed_slope_se its
    standard error; None with fewer than SPEED_MIN_BATCHES batches or no spread in speed.
    speed_sxx: the batch probes' sum of squared deviations; speed_reliability: the share
    of it that is not the probe's own noise (may be <= 0 where noise is all there is).
    resources.csv's t_s counts from the sampler's start, just after the load's.
    """
    probes = [(t, v) for row in rows
              if (t := row.get("t_s")) is not None
              and (v := row.get("machine_probe_ms")) is not None
              and start_s <= t < end_s]
    if not probes:
        return {}
    t_probe = np.array([t for t, _ in probes])
    v_probe = np.array([v for _, v in probes])
    metrics: dict[str, Any] = {"machine_probe_ms": round(float(v_probe.mean()), 3),
                               "speed_slope": None, "speed_slope_se": None,
                               "speed_sxx": None, "speed_reliability": None}
    batches = int((end_s - start_s) // SPEED_BATCH_S)
    edges = start_s + SPEED_BATCH_S * np.arange(batches + 1)
    if batches < SPEED_MIN_BATCHES:
        return metrics
    counts, _ = np.histogram(success_times_s, bins=edges)
    which = np.digitize(t_probe, edges) - 1
    inside = which < batches  # the probes past the last whole batch are left out
    which, v_batch = which[inside], v_probe[inside]
    probed = np.bincount(which, minlength=batches)
    has = probed > 1  # a batch's noise needs two of its rows
    if int(has.sum()) < SPEED_MIN_BATCHES:
        return metrics
    sums = np.bincount(which, weights=v_batch, minlength=batches)
    squares = np.bincount(which, weights=v_batch ** 2, minlength=batches)
    n = probed[has]
    xs = sums[has] / n
    row_var = (squares[has] - n * xs ** 2) / (n - 1)
    ys = counts[has] / SPEED_BATCH_S
    sxx = float(np.sum((xs - xs.mean()) ** 2))
    if sxx <= 0:
        return metrics
    slope = float(np.sum((xs - xs.mean()) * (ys - ys.mean()))) / sxx
    residuals = ys - ys.mean() - slope * (xs - xs.mean())
    se = math.sqrt(float(np.sum(residuals ** 2)) / (len(xs) - 2) / sxx)
    # what the probe's noise adds to sxx on average: sum of the batch means' variances,
    # less the share the grand mean takes out
    noise = float(np.sum(np.maximum(row_var, 0.0) / n)) * (1 - 1 / len(xs))
    metrics.update(speed_slope=round(slope, 4), speed_slope_se=round(se, 4),
                   speed_sxx=round(sxx, 6), speed_reliability=round(1 - noise / sxx, 4))
    return metrics


def load_worker_metrics(path: Path) -> dict[str, Any]:
    """Per remote load worker (load_workers.csv): its address, rows sent, mean and peak CPU
    (% of one core, a 3-report moving average for the peak); a worker that sent no CPU
    figure is listed in load_cpu_not_measured, never counted as 0."""
    by_worker: dict[str, dict[str, Any]] = {}
    for row in read_csv(path):
        name = row.get("worker") or "?"
        entry = by_worker.setdefault(name, {"address": row.get("address") or None,
                                            "rows": 0, "cpu": []})
        entry["rows"] += int(to_float(row.get("rows")) or 0)
        cpu = to_float(row.get("cpu_pct"))
        if cpu is not None:
            entry["cpu"].append(cpu)
    if not by_worker:
        return {}
    workers, not_measured = [], []
    for name, entry in sorted(by_worker.items()):
        cpu = entry.pop("cpu")
        smooth = [statistics.fmean(cpu[i:i + 3]) for i in range(max(len(cpu) - 2, 1))
                  ] if cpu else []
        workers.append({"worker": name, **entry, "mean_cpu_pct": _mean(cpu),
                        "peak_cpu_pct": round(max(smooth), 1) if smooth else None})
        if not cpu:
            not_measured.append(name)
    return {"load_workers": workers, "load_cpu_not_measured": not_measured,
            "load_workers_saturated": any((w["peak_cpu_pct"] or 0) > SATURATED_CPU_PCT
                                          for w in workers)}


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def cell_metrics(cell_dir: Path, profile: Profile, end_s: float | None = None
                 ) -> CellMetrics:
    """Every metric of a cell. `end_s`: when the load was stopped (s since its start);
    None takes the last response's time (a load that ran to its end)."""
    responses = read_responses(cell_dir / "responses.csv")
    if end_s is None:
        end_s = float(responses.t_s.max()) if len(responses) else profile.max_duration_s
    metrics: dict[str, Any] = {"hold_users": profile.users, "ramp_s": profile.ramp_s,
                               "hold_s": round(max(end_s - profile.ramp_s, 0.0), 3)}
    metrics.update(response_metrics(responses, profile.ramp_s, end_s))
    metrics.update(history_metrics(cell_dir / "stats_history.csv"))
    rows = resource_rows(cell_dir / "resources.csv")
    window_start = metrics.get("warmup_s", profile.ramp_s)
    metrics.update(resource_metrics(rows, window_start))
    if len(responses):
        metrics.update(speed_metrics(responses.success_times(), rows, window_start,
                                     window_start + metrics.get("window_s", 0.0)))
    workers = load_worker_metrics(cell_dir / "load_workers.csv")
    if workers:
        metrics.update(workers)
        metrics["load_generator_saturated"] = bool(
            metrics.get("load_generator_saturated") or workers["load_workers_saturated"])
    in_flight = metrics.get("mean_in_flight")
    if in_flight and in_flight >= 1 and metrics.get("peak_server_db_rss_mib") is not None:
        growth = metrics["peak_server_db_rss_mib"] - metrics["baseline_server_db_rss_mib"]
        metrics["rss_per_in_flight_kib"] = round(max(growth, 0.0) * 1024 / in_flight, 1)
    metrics.setdefault("max_srps", None)
    return CellMetrics(**metrics)  # type: ignore[typeddict-item]
