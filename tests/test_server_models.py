"""What a variant's title claims about how its server waits and parses, checked on the
running server: the gevent worker overlaps requests that wait on PostgreSQL (psycopg 3
waits through gevent's patched poll), a blocking worker does not; the Uvicorn workers load
exactly the event loop and HTTP parser libraries they name."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import request_json, serving

from bench.latency.proxy import ProxySession
from bench.processes import process_tree
from bench.variants import discover

pytestmark = pytest.mark.integration

DELAY_MS = 100  # on the server -> PostgreSQL path: each request waits several round trips
CONCURRENT = 8


def io_read_s(base: str) -> float:
    started = time.monotonic()
    status, _ = request_json(f"{base}/io_read/", timeout_s=60)
    assert status == 200
    return time.monotonic() - started


def speedup_of_concurrent_requests(base: str) -> float:
    """(CONCURRENT x one request's time) / wall time of CONCURRENT requests at once:
    about CONCURRENT when they overlap, about 1 when the server serves one at a time."""
    io_read_s(base)  # warm: the first request also loads the app's code paths
    single_s = min(io_read_s(base) for _ in range(2))
    with ThreadPoolExecutor(CONCURRENT) as pool:
        started = time.monotonic()
        list(pool.map(lambda _: io_read_s(base), range(CONCURRENT)))
        wall_s = time.monotonic() - started
    return CONCURRENT * single_s / wall_s


@pytest.mark.parametrize(("name", "overlaps"), [("sync_gevent", True), ("sync_gunicorn", False)])
def test_sync_views_wait_on_postgres_cooperatively_only_under_gevent(
        pg_cluster, pg_template, tmp_path: Path, name: str, overlaps: bool) -> None:
    variant = discover()[name]
    with ProxySession(DELAY_MS) as latency:
        endpoint = latency.db_endpoint(pg_cluster.host, pg_cluster.port)
        with serving(pg_cluster, variant, f"t_models_{name}", tmp_path,
                     db_endpoint=endpoint) as (base, _db):
            speedup = speedup_of_concurrent_requests(base)
    if overlaps:
        assert speedup >= CONCURRENT / 3, f"{name}: {speedup:.1f}x, requests did not overlap"
    else:
        assert speedup < 2, f"{name}: {speedup:.1f}x from a one-request-at-a-time server"


def mapped_libraries(base: str) -> set[str]:
    """Which of uvloop, httptools the processes serving `base` have loaded (their native
    modules in /proc/<pid>/maps)."""
    port = int(base.rsplit(":", 1)[1])
    listeners = {c.pid for c in psutil.net_connections("tcp")
                 if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                 and c.pid is not None}
    assert listeners, f"no process of ours listens on {port}"
    found = set()
    for pid in listeners:
        for proc in process_tree(pid):
            try:
                maps = Path(f"/proc/{proc.pid}/maps").read_text()
            except OSError:
                continue
            found |= {lib for lib in ("uvloop", "httptools") if f"/{lib}/" in maps}
    return found


@pytest.mark.parametrize(("name", "libraries"), [
    ("async_uvloop", {"uvloop", "httptools"}),
    ("async_uvicorn", set()),  # asyncio + h11: pure Python, although both are installed
])
def test_uvicorn_workers_load_the_loop_and_parser_they_name(
        pg_cluster, pg_template, tmp_path: Path, name: str, libraries: set[str]) -> None:
    pytest.importorskip("uvloop")
    pytest.importorskip("httptools")
    variant = discover()[name]
    with serving(pg_cluster, variant, f"t_models_{name}", tmp_path) as (base, _db):
        assert request_json(f"{base}/io_read/")[0] == 200
        assert mapped_libraries(base) == libraries
