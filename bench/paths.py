"""Where the repository's data folders are (servers/, load/, results/)."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this harness runs from: the parent of the `bench` package.

    BENCH_REPO overrides it (a Docker image or an installed copy of the harness).
    """
    override = os.environ.get("BENCH_REPO")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parent.parent


def servers_dir() -> Path:
    return Path(os.environ.get("BENCH_SERVERS_DIR") or repo_root() / "servers")


def load_dir() -> Path:
    return repo_root() / "load"


def results_dir() -> Path:
    return repo_root() / "results"
