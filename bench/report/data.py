"""A results folder as typed records: run.json, and every planned cell with its cell.json.

A cell listed in run.json but without a readable cell.json is "missing" (not run yet, or
interrupted before it finished); its column, route and latency come from its id.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROUTE_ORDER = ("cpu", "io_read", "io_create")
CELL_ID = re.compile(r"^(?P<column>.+?)__(?P<route>.+?)__(?P<latency>\d+)ms__r(?P<repeat>\d+)$")


class ResultsError(Exception):
    """A folder that cannot be read as a run; one line for the user."""


@dataclass(frozen=True)
class Profile:
    name: str
    users: int | None
    duration_s: float | None
    hold_start_s: float | None


@dataclass
class CellRecord:
    cell_id: str
    column: str
    route: str
    latency_ms: int
    repeat: int
    status: str  # ok | failed | interrupted | missing
    reason: str | None = None
    study_label: str | None = None
    interface: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

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


@dataclass(frozen=True)
class Column:
    name: str
    interface: str | None
    study_label: str | None


@dataclass
class Run:
    folder: Path
    info: dict[str, Any]
    profile: Profile
    cells: list[CellRecord]

    @property
    def columns(self) -> list[Column]:
        """Columns in run.json's order, with what their cell.json files say about them."""
        seen: dict[str, Column] = {}
        for cell in self.cells:
            known = seen.get(cell.column)
            if known is None or (known.interface is None and cell.interface is not None):
                seen[cell.column] = Column(cell.column, cell.interface, cell.study_label)
        return list(seen.values())

    @property
    def routes(self) -> list[str]:
        present = {c.route for c in self.cells}
        return [r for r in ROUTE_ORDER if r in present] + sorted(present - set(ROUTE_ORDER))

    @property
    def latencies(self) -> list[int]:
        return sorted({c.latency_ms for c in self.cells})

    def group(self, column: str, route: str, latency_ms: int) -> list[CellRecord]:
        """The repeats of one (column, route, latency), by repeat number."""
        return sorted((c for c in self.cells if (c.column, c.route, c.latency_ms)
                       == (column, route, latency_ms)), key=lambda c: c.repeat)


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ResultsError(f"{path} is not valid JSON ({exc})") from None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def load_run(folder: Path) -> Run:
    run_json = folder / "run.json"
    if not run_json.is_file():
        raise ResultsError(f"{folder} is not a results folder (no run.json)")
    info = _read_json(run_json)
    if not isinstance(info, dict):
        raise ResultsError(f"{run_json} does not hold a JSON object")
    raw_profile = info.get("profile")
    if not isinstance(raw_profile, dict):
        raw_profile = {}
    users = _number(raw_profile.get("users"))
    profile = Profile(name=str(raw_profile.get("name", "?")),
                      users=int(users) if users is not None else None,
                      duration_s=_number(raw_profile.get("duration_s")),
                      hold_start_s=_number(raw_profile.get("hold_start_s")))
    cell_ids = [str(c) for c in info.get("cells") or []]
    on_disk = sorted(p.name for p in (folder / "cells").glob("*") if p.is_dir())
    cell_ids += [c for c in on_disk if c not in cell_ids]
    cells = [_load_cell(folder / "cells" / cell_id, cell_id) for cell_id in cell_ids]
    return Run(folder, info, profile, [c for c in cells if c is not None])


def _load_cell(cell_dir: Path, cell_id: str) -> CellRecord | None:
    match = CELL_ID.match(cell_id)
    path = cell_dir / "cell.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = _read_json(path)
        except ResultsError:
            loaded = None
        data = loaded if isinstance(loaded, dict) else {}
    if not data and match is None:
        return None  # neither a cell.json nor a readable id: nothing to show
    parts = match.groupdict() if match else {}
    if not data:
        return CellRecord(cell_id, parts["column"], parts["route"], int(parts["latency"]),
                          int(parts["repeat"]), "missing", folder=None)
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    return CellRecord(
        cell_id=cell_id,
        column=str(data.get("column") or parts.get("column") or cell_id),
        route=str(data.get("route") or parts.get("route") or "?"),
        latency_ms=int(data.get("latency_ms", parts.get("latency", 0)) or 0),
        repeat=int(data.get("repeat", parts.get("repeat", 1)) or 1),
        status=str(data.get("status") or "failed"),
        reason=None if data.get("reason") is None else str(data.get("reason")),
        study_label=data.get("study_label") or None,
        interface=data.get("interface") or None,
        metrics=dict(metrics or {}),
        folder=cell_dir,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts; [] when absent or unreadable."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def to_float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "", "N/A") else None
    except (TypeError, ValueError):
        return None
    return number if number is None or math.isfinite(number) else None
