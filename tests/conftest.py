"""Shared fixtures: one real embedded PostgreSQL cluster per test session; a variant served
over a fresh clone of its template, and HTTP calls to it."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from bench.net import free_port
from bench.pgbouncer import PgBouncer, PgBouncerError, find_binary
from bench.postgres import PostgresCluster, cache_root
from bench.server import ServerProcess, app_environment
from bench.variants import Variant

# Small template for tests: the routes' semantics do not depend on the row count.
TEST_ROWS = 2000
# The two longest xdist groups (about 5 minutes each): first in the collection, so that
# under nox's `-n 2 --dist loadgroup --no-loadscope-reorder` (work handed out in collection
# order) each starts on its own worker at once and the other tests fill in beside them.
FIRST_GROUPS = ("docker", "runs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The workers collect (the controller hands out their collection's order); xdist sets
    # their `dist` to "no" and `loadgroup` to whether the run is --dist loadgroup.
    if not getattr(config.option, "loadgroup", False):
        return

    def rank(item: pytest.Item) -> int:
        mark = item.get_closest_marker("xdist_group")
        name = mark.args[0] if mark and mark.args else None
        return FIRST_GROUPS.index(name) if name in FIRST_GROUPS else len(FIRST_GROUPS)

    items.sort(key=rank)  # stable: each group, and the rest, keep their order


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


@contextlib.contextmanager
def serving(cluster: PostgresCluster, variant: Variant, db_name: str, log_dir: Path,
            cpu_loop: int = 1000, db_endpoint: tuple[str, int] | None = None,
            cpu_ms: float | None = None) -> Iterator[tuple[str, str]]:
    """`variant` listening on a free port over `db_name`, a fresh clone of the template:
    (base URL, database); the server stopped and the database dropped afterwards. A variant
    that declares [pgbouncer] reaches the database through its own PgBouncer (the test is
    skipped where no pgbouncer program is installed). `db_endpoint`: where the server
    reaches PostgreSQL (a latency proxy), if not directly (and not through PgBouncer).
    `cpu_ms`: cpu/ runs for that CPU-time budget instead of `cpu_loop` turns."""
    with pgbouncer_for(cluster, variant) as pooler, serving_through(
            cluster, pooler, variant, db_name, log_dir, cpu_loop, db_endpoint,
            cpu_ms) as served:
        yield served


@contextlib.contextmanager
def serving_through(cluster: PostgresCluster, pooler: PgBouncer | None, variant: Variant,
                    db_name: str, log_dir: Path, cpu_loop: int = 1000,
                    db_endpoint: tuple[str, int] | None = None, cpu_ms: float | None = None,
                    ) -> Iterator[tuple[str, str]]:
    """`serving`, the app reaching the database through `pooler` when it is not None, else
    through `db_endpoint` when given."""
    db = cluster.clone_database(db_name)
    port = free_port("127.0.0.1")
    endpoint = (pooler.host, pooler.port) if pooler else db_endpoint
    db_env = cluster.app_env(db, *(endpoint or ()))
    env = app_environment(variant, db_env, ["127.0.0.1"], cpu_loop, cpu_ms=cpu_ms)
    server = ServerProcess(variant.server_command("127.0.0.1", port), env,
                           log_dir / "server.log")
    server.start()
    try:
        server.wait_listening("127.0.0.1", port)
        yield f"http://127.0.0.1:{port}", db
    finally:
        server.stop()
        cluster.drop_database(db)


@contextlib.contextmanager
def pgbouncer_for(cluster: PostgresCluster, variant: Variant) -> Iterator[PgBouncer | None]:
    """The variant's PgBouncer in front of `cluster`, or None when it declares none."""
    if variant.pgbouncer is None:
        yield None
        return
    try:
        program = find_binary()
    except PgBouncerError as exc:
        pytest.skip(str(exc))
    assert cluster.port is not None
    pooler = PgBouncer(program, cluster.pgbouncer_folder)
    try:
        pooler.start(variant.pgbouncer, cluster.host, cluster.port, cluster.user,
                     cluster.scram_secret())
        yield pooler
    finally:
        pooler.stop()


def request_json(url: str, body: bytes | None = None, method: str | None = None,
                 timeout_s: float = 60) -> tuple[int, Any]:
    """(status, JSON answer); a body goes as a form (POST unless `method` says otherwise)."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class JsonHandler(BaseHTTPRequestHandler):
    """A hand-made server's handler for tests: answer() sends JSON; no access log."""

    def answer(self, status: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass
