"""A results folder as typed records: run.json, and every planned cell with its cell.json.

A cell listed in run.json but without a readable cell.json is "missing" (not run yet, or
interrupted before it finished); its column, route and latency come from its id.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import record
from bench.load import Profile
from bench.results import read_csv, to_float

__all__ = ["CellRecord", "Column", "Profile", "ResultsError", "Run", "load_run", "read_csv",
           "to_float"]

ROUTE_ORDER = ("cpu", "io_read", "io_create")
CELL_ID = re.compile(r"^(?P<column>.+?)__(?P<route>.+?)__(?P<latency>\d+)ms__r(?P<repeat>\d+)$")


class ResultsError(Exception):
    """A folder that cannot be read as a run; one line for the user."""


@dataclass
class CellRecord(record.CellRecord):
    """A cell of the run as the report sees it: its record, where it lives, or "missing"."""

    folder: Path | None = None


@dataclass(frozen=True)
class Column:
    name: str
    interface: str | None
    study_label: str | None


@dataclass
class Run:
    folder: Path
    info: dict[str, Any]
    profile: Profile | None
    cells: list[CellRecord]

    @property
    def columns(self) -> list[Column]:
        """Columns with what their cell.json files say about them: the study's setups first,
        in the study's order (Sync, Async Limited, Async Unlimited), then the others by name
        (cells run in a shuffled order, so their order says nothing)."""
        seen: dict[str, Column] = {}
        for cell in self.cells:
            known = seen.get(cell.column)
            if known is None or (known.interface is None and cell.interface is not None):
                seen[cell.column] = Column(cell.column, cell.interface, cell.study_label)
        study = ("Sync", "Async Limited", "Async Unlimited")

        def key(column: Column) -> tuple[int, str]:
            label = column.study_label
            return (study.index(label) if label in study else len(study), column.name)

        return sorted(seen.values(), key=key)

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
    profile = _profile(info.get("profile"))
    cell_ids = [str(c) for c in info.get("cells") or []]
    on_disk = sorted(p.name for p in (folder / "cells").glob("*") if p.is_dir())
    cell_ids += [c for c in on_disk if c not in cell_ids]
    cells = [_load_cell(folder / "cells" / cell_id, cell_id) for cell_id in cell_ids]
    return Run(folder, info, profile, [c for c in cells if c is not None])


def _profile(raw: Any) -> Profile | None:
    """The run's profile (format 2); None for a run of another format."""
    try:
        return Profile(**raw) if isinstance(raw, dict) else None
    except TypeError:
        return None


def _load_cell(cell_dir: Path, cell_id: str) -> CellRecord | None:
    match = CELL_ID.match(cell_id)
    path = cell_dir / "cell.json"
    loaded: record.CellRecord | None = None
    if path.is_file():
        try:
            loaded = record.read_cell(path)
        except record.RecordError as exc:
            if "unknown format" in str(exc):
                raise ResultsError(str(exc)) from None
            loaded = None
    if loaded is None and match is None:
        return None  # neither a cell.json nor a readable id: nothing to show
    if loaded is None:
        assert match is not None
        parts = match.groupdict()
        return CellRecord(cell_id, parts["column"], parts["column"], parts["route"],
                          int(parts["latency"]), int(parts["repeat"]), status="missing")
    return CellRecord(**{**asdict(loaded), "folder": cell_dir})


