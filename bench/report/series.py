"""A cell's per-second time series: users, sRPS, failures/s, p50 and p95.

From Locust's stats_history.csv (Aggregated rows) when it has them; otherwise rebuilt
from responses.csv (one row per request), where users are unknown.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.report.data import read_csv, to_float


@dataclass
class Series:
    source: str  # "stats_history.csv" | "responses.csv"
    t_s: list[float] = field(default_factory=list)
    users: list[float | None] = field(default_factory=list)
    srps: list[float | None] = field(default_factory=list)
    failures_per_s: list[float | None] = field(default_factory=list)
    p50_ms: list[float | None] = field(default_factory=list)
    p95_ms: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t_s)


def from_history(path: Path) -> Series | None:
    rows = [r for r in read_csv(path) if r.get("Name") == "Aggregated"]
    stamps = [to_float(r.get("Timestamp")) for r in rows]
    if not rows or stamps[0] is None:
        return None
    start = stamps[0]
    series = Series("stats_history.csv")
    for row, stamp in zip(rows, stamps, strict=True):
        if stamp is None:
            continue
        rps, fps = to_float(row.get("Requests/s")), to_float(row.get("Failures/s"))
        series.t_s.append(stamp - start)
        series.users.append(to_float(row.get("User Count")))
        series.srps.append(None if rps is None else rps - (fps or 0.0))
        series.failures_per_s.append(fps)
        series.p50_ms.append(to_float(row.get("50%")))
        series.p95_ms.append(to_float(row.get("95%")))
    return series


def from_responses(path: Path) -> Series | None:
    ok_count: dict[int, int] = defaultdict(int)
    failed: dict[int, int] = defaultdict(int)
    times: dict[int, list[float]] = defaultdict(list)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if len(row) < 4:
                    continue
                t, rt = to_float(row[0]), to_float(row[2])
                if t is None or rt is None:
                    continue
                second = int(t)
                if row[3] == "1":
                    ok_count[second] += 1
                else:
                    failed[second] += 1
                times[second].append(rt)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    if not times:
        return None
    series = Series("responses.csv")
    for second in range(0, max(times) + 1):
        values = times.get(second)
        series.t_s.append(float(second))
        series.users.append(None)
        series.srps.append(float(ok_count.get(second, 0)))
        series.failures_per_s.append(float(failed.get(second, 0)))
        if values:
            p50, p95 = np.percentile(np.array(values), [50, 95])
            series.p50_ms.append(float(p50))
            series.p95_ms.append(float(p95))
        else:
            series.p50_ms.append(None)
            series.p95_ms.append(None)
    return series


def cell_series(cell_dir: Path | None) -> Series | None:
    if cell_dir is None:
        return None
    return from_history(cell_dir / "stats_history.csv") or from_responses(
        cell_dir / "responses.csv")
