"""A cell's metrics from its files: responses.csv (one row per request), Locust's
stats_history.csv and resources.csv. Definitions are in results/README.md.

- max_srps: the study's metric, max over Locust's history of Requests/s - Failures/s.
- steady_srps: successes finishing in the hold phase / its length; 95% CI by batch means
  (5 equal batches of the hold phase, Student t with 4 degrees of freedom).
- p50/p95/p99: response times of the requests finishing in the hold phase.
- in-flight requests (Little's law): the sum of hold-phase response times / hold length.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from bench.load import Profile

BATCHES = 5
SATURATED_CPU_PCT = 90.0


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _float(value: str | None) -> float | None:
    try:
        result = float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None
    return result if result is None or math.isfinite(result) else None


def batch_means_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of `values` (batch means or repeats)."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values))
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * sem
    return round(mean - half, 2), round(mean + half, 2)


def response_metrics(path: Path, profile: Profile) -> dict[str, Any]:
    times: list[float] = []
    hold_times: list[float] = []
    batch_counts = [0] * BATCHES
    successes = failures = 0
    kinds: Counter[str] = Counter()
    start, end = profile.hold_start_s, profile.duration_s
    width = (end - start) / BATCHES
    with_rows = False
    if path.is_file():
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                with_rows = True
                t, rt, ok = float(row[0]), float(row[2]), row[3] == "1"
                if ok:
                    successes += 1
                else:
                    failures += 1
                    kinds[row[4] or "unknown"] += 1
                if start <= t < end:
                    hold_times.append(rt)
                    if ok:
                        batch_counts[min(int((t - start) / width), BATCHES - 1)] += 1
                times.append(rt)
    if not with_rows:
        return {"total_requests": 0, "total_successes": 0, "total_failures": 0,
                "failures_by_kind": {}}
    hold_s = end - start
    rates = [c / width for c in batch_counts]
    metrics: dict[str, Any] = {
        "total_requests": successes + failures, "total_successes": successes,
        "total_failures": failures, "failures_by_kind": dict(kinds.most_common()),
        "hold_s": hold_s, "steady_srps": round(sum(batch_counts) / hold_s, 2),
        "steady_srps_ci95": batch_means_ci(rates), "ci_method": "batch_means",
        "mean_in_flight": round(sum(hold_times) / 1000 / hold_s, 2),
    }
    if hold_times:
        p50, p95, p99 = np.percentile(np.array(hold_times), [50, 95, 99])
        metrics.update(p50_ms=round(float(p50), 1), p95_ms=round(float(p95), 1),
                       p99_ms=round(float(p99), 1))
    return metrics


def history_metrics(path: Path) -> dict[str, Any]:
    best: float | None = None
    for row in _rows(path):
        if row.get("Name") != "Aggregated":
            continue
        rps, fps = _float(row.get("Requests/s")), _float(row.get("Failures/s"))
        if rps is None:
            continue
        value = rps - (fps or 0.0)
        best = value if best is None else max(best, value)
    return {"max_srps": round(best, 2)} if best is not None else {}


def resource_metrics(path: Path, profile: Profile) -> dict[str, Any]:
    rows = [{k: _float(v) for k, v in row.items()} for row in _rows(path)]
    if not rows:
        return {}

    def col(name: str) -> list[float]:
        return [r[name] for r in rows if r.get(name) is not None]  # type: ignore[misc]

    def peak(name: str) -> float | None:
        values = col(name)
        return max(values) if values else None

    hold = [r for r in rows if (r.get("t_s") or 0) >= profile.hold_start_s] or rows
    server_cpu = [float(v) for r in hold if (v := r.get("server_cpu_pct")) is not None]
    locust_cpu = col("locust_cpu_pct")
    # A 3-second moving average, so one noisy sample does not flag a cell.
    smooth = [statistics.fmean(locust_cpu[i:i + 3]) for i in range(max(len(locust_cpu) - 2, 1))
              ] if locust_cpu else []
    combined = [(r.get("server_rss_mib") or 0) + (r.get("db_rss_mib") or 0) for r in rows]
    out: dict[str, Any] = {
        "peak_server_rss_mib": peak("server_rss_mib"),
        "mean_server_cpu_pct": round(statistics.fmean(server_cpu), 1) if server_cpu else None,
        "peak_server_threads": _int(peak("server_threads")),
        "peak_db_connections": _int(peak("db_connections")),
        "peak_db_rss_mib": peak("db_rss_mib"),
        "peak_server_db_rss_mib": round(max(combined), 2),
        "baseline_server_db_rss_mib": round(combined[0], 2),
        "mean_locust_cpu_pct": round(statistics.fmean(locust_cpu), 1) if locust_cpu else None,
        "peak_locust_cpu_pct": round(max(smooth), 1) if smooth else None,
        "load_generator_saturated": bool(smooth) and max(smooth) > SATURATED_CPU_PCT,
    }
    return out


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def cell_metrics(cell_dir: Path, profile: Profile) -> dict[str, Any]:
    metrics: dict[str, Any] = {"hold_users": profile.users}
    metrics.update(response_metrics(cell_dir / "responses.csv", profile))
    metrics.update(history_metrics(cell_dir / "stats_history.csv"))
    metrics.update(resource_metrics(cell_dir / "resources.csv", profile))
    in_flight = metrics.get("mean_in_flight")
    if in_flight and in_flight >= 1 and metrics.get("peak_server_db_rss_mib") is not None:
        growth = metrics["peak_server_db_rss_mib"] - metrics["baseline_server_db_rss_mib"]
        metrics["rss_per_in_flight_kib"] = round(max(growth, 0.0) * 1024 / in_flight, 1)
    metrics.setdefault("max_srps", None)
    return metrics
