"""Connection limits for real: the pool bounds connections and its exhaustion is a
pool_timeout; threads bound sync_gthread's; native psycopg views answer as the ORM's do.

To hold connections deterministically, the test locks the posts table: every request that
reaches the database then waits on the lock while holding its connection.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import request_json, serving

from bench.postgres import PostgresCluster
from bench.variants import PoolSettings, discover

pytestmark = pytest.mark.integration

TEST_APP = "bench-test"


def call(url: str, data: dict[str, str] | None = None) -> tuple[int, Any]:
    return request_json(url, urllib.parse.urlencode(data).encode() if data is not None else None)


def app_connections(cluster: PostgresCluster, db: str) -> int:
    with cluster.connect(db, application_name=TEST_APP) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                           "backend_type = 'client backend' AND application_name <> %s",
                           (db, TEST_APP)).fetchone()
    return int(row[0]) if row else 0


def load_under_lock(cluster: PostgresCluster, base: str, db: str, concurrency: int,
                    hold_s: float) -> tuple[int, list[tuple[int, Any]]]:
    """`concurrency` io_read requests while the table is locked for `hold_s`; returns the
    peak number of app connections seen and every answer."""
    peak = 0
    with cluster.connect(db, application_name=TEST_APP, autocommit=False) as lock_conn:
        lock_conn.execute("LOCK TABLE posts_post IN ACCESS EXCLUSIVE MODE")
        pool = ThreadPoolExecutor(max_workers=concurrency)
        futures = [pool.submit(call, f"{base}/io_read/") for _ in range(concurrency)]
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            peak = max(peak, app_connections(cluster, db))
            time.sleep(0.05)
        lock_conn.rollback()  # releases the lock
    answers = [f.result(timeout=120) for f in futures]
    pool.shutdown()
    return peak, answers


def test_pool_bounds_connections_and_exhaustion_is_pool_timeout(
        pg_cluster: PostgresCluster, pg_template: str, tmp_path: Path) -> None:
    variant = replace(discover()["async_pooled"], pool=PoolSettings(1, 3, 1.0))
    with serving(pg_cluster, variant, f"t_conn_{variant.name}", tmp_path) as (base, db):
        peak, answers = load_under_lock(pg_cluster, base, db, concurrency=20, hold_s=3.0)
    assert 1 <= peak <= 3, peak
    statuses = [status for status, _ in answers]
    kinds = {body.get("error") for status, body in answers if status != 200}
    assert statuses.count(503) >= 10, statuses
    assert kinds == {"pool_timeout"}, kinds
    assert statuses.count(200) >= 3  # the ones holding the pool's connections finish


def test_pool_holds_under_a_concurrent_load_without_lock(
        pg_cluster: PostgresCluster, pg_template: str, tmp_path: Path) -> None:
    variant = discover()["async_pooled"].with_overrides(pool_max_size=4)
    assert variant.pool and variant.pool.max_size == 4
    with serving(pg_cluster, variant, f"t_conn_{variant.name}", tmp_path) as (base, db):
        stop = threading.Event()
        peak = 0

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, app_connections(pg_cluster, db))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(max_workers=30) as pool:
            answers = list(pool.map(lambda i: call(f"{base}/io_create/",
                                                   {"title": f"t{i}", "content": "c"}),
                                    range(300)))
        stop.set()
        sampler.join()
    assert all(status == 200 for status, _ in answers)
    assert 1 <= peak <= 4, peak


def test_gthread_holds_at_most_its_threads(pg_cluster: PostgresCluster, pg_template: str,
                                           tmp_path: Path) -> None:
    variant = discover()["sync_gthread"]
    threads = int(variant.command[variant.command.index("--threads") + 1])
    with serving(pg_cluster, variant, f"t_conn_{variant.name}", tmp_path) as (base, db):
        peak, answers = load_under_lock(pg_cluster, base, db, concurrency=threads + 15,
                                        hold_s=3.0)
    assert peak <= threads, (peak, threads)
    assert peak >= threads // 2  # the threads really were busy on the database
    assert all(status == 200 for status, _ in answers)


def test_native_views_answer_exactly_like_the_orm(pg_cluster: PostgresCluster,
                                                  pg_template: str, tmp_path: Path) -> None:
    variants = discover()
    answers: dict[str, dict[str, Any]] = {}
    for name in ("async_native", "async_uvicorn", "sync_gunicorn"):
        with serving(pg_cluster, variants[name], f"t_conn_{name}", tmp_path) as (base, db):
            created = call(f"{base}/io_create/", {"title": "same", "content": "answer"})
            read = call(f"{base}/io_read/")
            answers[name] = {"cpu": call(f"{base}/cpu/"), "created": created, "read": read}
    native, orm = answers["async_native"], answers["async_uvicorn"]
    assert native["cpu"] == orm["cpu"] == answers["sync_gunicorn"]["cpu"]
    for flavour in (native, orm):
        status, body = flavour["created"]
        assert status == 200 and set(body) == {"id", "title", "content", "created_at",
                                               "updated_at"}
        assert (body["title"], body["content"]) == ("same", "answer")
        assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]
    # Same database content -> the same 25 posts and count (ids of the new rows differ).
    assert native["read"][1]["ct"] == orm["read"][1]["ct"]
    old = [p for p in native["read"][1]["posts"] if p["title"] != "same"]
    old_orm = [p for p in orm["read"][1]["posts"] if p["title"] != "same"]
    assert old == old_orm[:len(old)]
    # Timestamps are serialized the same way in both flavours.
    assert len(native["created"][1]["created_at"]) == len(orm["created"][1]["created_at"])
