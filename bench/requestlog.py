"""The request log: one row per response, as Locust's processes write it and as a cell keeps it.

While Locust runs, each of its processes appends to `responses.<pid>.csv` in its work folder
(end time as Unix seconds, name, response time in ms, ok 1/0, failure kind) and writes
`start.<pid>` (Unix seconds) when its test starts; a master writes the rows its remote
workers send as `responses.w<index>.csv` and `start.w<index>` (load/locustfile.py). The part
between the dots names where a row came from: the `source` column of responses.csv.
`RequestLog` reads those files incrementally, complete lines only, so the runner can judge
the steady state while the load runs; at the end the rows are merged into the cell's
`responses.csv`, times relative to the load's start. `read_responses` reads that file back:
metrics and the report read requests through here and nowhere else.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEADER = ("t_s", "name", "response_time_ms", "ok", "kind", "source")


@dataclass
class Responses:
    """Requests of a cell, times in seconds since the load started."""

    t_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    response_time_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ok: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    kind: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t_s)

    def success_times(self) -> np.ndarray:
        return self.t_s[self.ok]


def _parse(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text)) if len(row) >= 4]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class RequestLog:
    """The growing request logs of one Locust run (one file per Locust process)."""

    def __init__(self, folder: Path, fallback_start: float | None = None) -> None:
        self.folder = folder
        self.fallback_start = fallback_start
        self._offsets: dict[Path, int] = {}
        self._rows: list[tuple[float, str, float, bool, str, str]] = []

    def start(self) -> float | None:
        """When the load started (Unix s): the earliest `start.<pid>` of Locust's processes."""
        stamps = []
        for path in self.folder.glob("start.*"):
            try:
                value = _number(path.read_text().strip())
            except OSError:
                continue
            if value is not None:
                stamps.append(value)
        return min(stamps) if stamps else self.fallback_start

    def poll(self) -> int:
        """Read what was appended since the last call; the number of new rows."""
        added = 0
        for path in sorted(self.folder.glob("responses.*.csv")):
            offset = self._offsets.get(path, 0)
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                continue
            complete = chunk.rfind(b"\n") + 1
            if complete == 0:
                continue
            self._offsets[path] = offset + complete
            source = path.name.removeprefix("responses.").removesuffix(".csv")
            for row in _parse(chunk[:complete].decode("utf-8", errors="replace")):
                end, rt = _number(row[0]), _number(row[2])
                if end is None or rt is None:  # the header, or a damaged line
                    continue
                self._rows.append((end, row[1], rt, row[3] == "1", row[4] if len(row) > 4
                                   else "", source))
                added += 1
        return added

    def responses(self) -> Responses:
        """Everything read so far, relative to the load's start."""
        start = self.start()
        rows = sorted(self._rows)
        if not rows:
            return Responses()
        origin = start if start is not None else rows[0][0]
        return Responses(np.array([r[0] - origin for r in rows]), np.array([r[2] for r in rows]),
                         np.array([r[3] for r in rows], dtype=bool), [r[4] for r in rows])

    def rows(self) -> list[tuple[float, str, float, int, str, str]]:
        """Rows for responses.csv (after a final poll), sorted by time."""
        self.poll()
        start = self.start()
        ordered = sorted(self._rows)
        origin = start if start is not None else (ordered[0][0] if ordered else 0.0)
        return [(round(end - origin, 3), name, round(rt, 2), int(ok), kind, source)
                for end, name, rt, ok, kind, source in ordered]


def read_request_log(folder: Path, fallback_start: float | None = None) -> RequestLog:
    log = RequestLog(folder, fallback_start)
    log.poll()
    return log


def read_responses(path: Path) -> Responses:
    """A cell's responses.csv ({} of requests when it is absent)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return Responses()
    t, rt, ok, kind = [], [], [], []
    for row in _parse(text):
        when, ms = _number(row[0]), _number(row[2])
        if when is None or ms is None:
            continue
        t.append(when)
        rt.append(ms)
        ok.append(row[3] == "1")
        kind.append(row[4] if len(row) > 4 else "")
    return Responses(np.array(t, dtype=float), np.array(rt, dtype=float),
                     np.array(ok, dtype=bool), kind)
