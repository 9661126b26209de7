"""Atomic writes of result files: write to a temporary name, then rename.

A crash leaves either the old file or the new one, never half of one; cell.json is
written last, so a cell folder without it is unfinished.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

FORMAT = 1


# Results are for sharing (another user, a web server serving report.html): readable by
# all whatever the umask. mkstemp alone would leave every file 0600.
FILE_MODE = 0o644
FOLDER_MODE = 0o755


def ensure_folder(folder: Path) -> None:
    """Create `folder` and its missing parents, each FOLDER_MODE; existing ones are kept."""
    for missing in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
        try:
            missing.mkdir()
        except FileExistsError:
            continue  # another process made it first: its mode is its own
        missing.chmod(FOLDER_MODE)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file that appears at `path` complete, FILE_MODE, or not at all."""
    ensure_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with _atomic_file(path) as handle:
        handle.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with _atomic_file(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a result CSV as dicts; [] when it is absent or unreadable."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def to_float(value: str | None) -> float | None:
    """A CSV field as a finite float; None for empty, "N/A", text or inf/nan."""
    try:
        number = float(value) if value not in (None, "", "N/A") else None
    except (TypeError, ValueError):
        return None
    return number if number is None or math.isfinite(number) else None
