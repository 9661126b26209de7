"""Shared fixtures: one real embedded PostgreSQL cluster per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.postgres import PostgresCluster

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
