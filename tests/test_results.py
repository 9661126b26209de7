"""Result files: atomic, and readable by other users whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.results import ensure_folder, write_csv_atomic, write_json_atomic, write_text_atomic


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that alone would make every new file 0600 and folder 0700."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_0644_and_new_folders_0755(tmp_path: Path, strict_umask: None) -> None:
    cell = tmp_path / "run" / "cells" / "a"
    write_text_atomic(tmp_path / "run" / "report.html", "<p>hi</p>")
    write_json_atomic(cell / "cell.json", {"status": "ok"})
    write_csv_atomic(cell / "stats.csv", ["a", "b"], [[1, 2]])
    for name in ("run/report.html", "run/cells/a/cell.json", "run/cells/a/stats.csv"):
        assert mode(tmp_path / name) == 0o644, name
    for name in ("run", "run/cells", "run/cells/a"):
        assert mode(tmp_path / name) == 0o755, name
    assert (cell / "stats.csv").read_bytes() == b"a,b\r\n1,2\r\n"


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    ensure_folder(private / "sub")
    assert mode(private) == 0o700
    assert mode(private / "sub") == 0o755


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path: Path) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_csv_atomic(tmp_path / "x.csv", ["a"], [[Unprintable()]])
    assert list(tmp_path.iterdir()) == []
