"""Shared fixtures: one real embedded PostgreSQL cluster per test session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.postgres import PostgresCluster, cache_root

# Small template for tests: the routes' semantics do not depend on the row count.
TEST_ROWS = 2000


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start(max_connections=120)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def pg_template_rows() -> int:
    return TEST_ROWS


@pytest.fixture(scope="session")
def pg_template(pg_cluster: PostgresCluster, pg_template_rows: int) -> str:
    return pg_cluster.ensure_template(pg_template_rows)


@pytest.fixture
def pg_cache_dir() -> Iterator[Path]:
    """A throwaway cache folder PostgreSQL's unprivileged user can enter (pytest's tmp_path
    is under a 0700 folder of root's)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="test-", dir=cache_root()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
