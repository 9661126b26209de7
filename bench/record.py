"""cell.json as one typed, versioned record: the runner writes it, the report reads it back.

Format 2 (this round) adds the steady-state fields (warmup_s, stopped_by, unsteady, the
batch-means details, verification_ms, machine noise); format 1 cells (the first round's)
are still read, their missing fields left empty. Any other format is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

from bench.results import read_json, write_json_atomic

FORMAT = 2
READABLE_FORMATS = (1, 2)
STATUSES = ("ok", "failed", "interrupted")


class RecordError(Exception):
    """A cell.json that cannot be read as a cell record; one line naming the file."""


class CellMetrics(TypedDict, total=False):
    """What bench/metrics.py computes for a cell (results/README.md defines each)."""

    total_requests: int
    total_successes: int
    total_failures: int
    failures_by_kind: dict[str, int]
    max_srps: float | None
    steady_srps: float
    steady_srps_ci95: list[float] | None
    steady_half_width_pct: float | None
    ci_method: str
    batch_s: float
    batches: int
    batch_lag1: float | None
    batches_independent: bool
    warmup_s: float
    window_s: float
    hold_s: float
    ramp_s: float
    unsteady: bool
    drift_pct: float | None
    steady_failures_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_in_flight: float
    hold_users: int
    peak_server_rss_mib: float | None
    mean_server_cpu_pct: float | None
    peak_server_threads: int | None
    peak_db_connections: int | None
    peak_db_rss_mib: float | None
    peak_server_db_rss_mib: float | None
    baseline_server_db_rss_mib: float | None
    mean_locust_cpu_pct: float | None
    peak_locust_cpu_pct: float | None
    load_generator_saturated: bool
    mean_steal_pct: float | None
    mean_outside_cpu_pct: float | None
    machine_probe_ms: float  # the machine's speed during the window (bench/metrics.py)
    speed_slope: float | None  # sRPS per ms of probe
    speed_slope_se: float | None
    speed_sxx: float | None  # the batch probes' spread, ms^2
    speed_reliability: float | None  # the share of it that is not the probe's noise
    rss_per_in_flight_kib: float
    peak_pgbouncer_rss_mib: float | None
    peak_pgbouncer_clients: int | None
    peak_pgbouncer_servers: int | None
    load_workers: list[dict[str, Any]]  # remote load workers: address, rows, CPU
    load_cpu_not_measured: list[str]  # workers whose CPU did not come back
    load_workers_saturated: bool


@dataclass
class CellRecord:
    """One cell's cell.json."""

    cell_id: str
    column: str
    variant: str
    route: str
    latency_ms: int
    repeat: int
    status: str = "failed"
    reason: str | None = None
    title: str = ""
    study_label: str | None = None
    interface: str | None = None
    views: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    latency_backend: str | None = None
    placement: dict[str, list[int]] = field(default_factory=dict)
    mode: str = "local"
    load_workers: int | None = None  # remote Locust workers that sent requests (None: local)
    not_measured: list[str] = field(default_factory=list)  # figures this cell could not see
    order: int | None = None  # position in the run's (shuffled) order
    stopped_by: str | None = None  # precision | max_hold | None (did not finish)
    precision: float | None = None
    # The run's CPU loop (bench/machine.py), timed on the server's core just before this
    # cell: median ms of CELL_CALIBRATION_TIMES. The machine's speed drifts over minutes;
    # this shows by how much between cells (None: an external --target, or older records).
    machine_loop_ms: float | None = None
    verification_ms: dict[str, float] = field(default_factory=dict)
    metrics: CellMetrics = field(default_factory=lambda: CellMetrics())
    phases_s: dict[str, float] = field(default_factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    overhead_s: float | None = None
    format: int = FORMAT

    def metric(self, name: str) -> float | None:
        """A finite number from metrics, else None."""
        value = self.metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        value = self.metrics.get("steady_srps_ci95")
        if isinstance(value, list | tuple) and len(value) == 2 and all(
                isinstance(v, int | float) for v in value):
            return float(value[0]), float(value[1])
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str = "cell.json") -> CellRecord:
        if not isinstance(data, dict):
            raise RecordError(f"{where}: not a JSON object")
        version = data.get("format")
        if version not in READABLE_FORMATS:
            raise RecordError(f"{where}: unknown format version {version!r} (this harness "
                              f"reads {', '.join(map(str, READABLE_FORMATS))})")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = [k for k in ("cell_id", "column", "route", "latency_ms", "repeat")
                   if k not in values]
        if missing:
            raise RecordError(f"{where}: missing {', '.join(missing)}")
        values.setdefault("variant", values["column"])
        if not isinstance(values.get("metrics"), dict):
            values["metrics"] = CellMetrics()
        record = cls(**values)
        if record.status not in STATUSES:
            raise RecordError(f"{where}: status {record.status!r} is not one of "
                              f"{', '.join(STATUSES)}")
        return record


def read_cell(path: Path) -> CellRecord:
    try:
        data = read_json(path)
    except OSError as exc:
        raise RecordError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise RecordError(f"{path} is not valid JSON ({exc})") from None
    return CellRecord.from_json(data, str(path))
