"""PgBouncer as a component and the --conn-max-age sweep: the ini we build, the variant
table's errors, the columns a sweep plans or skips, and for real (Debian's pgbouncer in
front of the embedded PostgreSQL) that PgBouncer bounds PostgreSQL's connections where the
app opens one per in-flight request, and that a killed harness's PgBouncer does not
survive the next start.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import psutil
import pytest
from conftest import pgbouncer_for, serving, serving_through
from test_connections import app_connections, call, load_under_lock
from test_variants import GOOD, write_variant

from bench.pgbouncer import (
    PgBouncer,
    PgBouncerError,
    PgBouncerSettings,
    config_text,
    find_binary,
)
from bench.postgres import PostgresCluster
from bench.runner import RunConfig, plan_cells, plan_columns
from bench.variants import VariantError, discover, parse_variant

TABLE = """
[pgbouncer]
pool_mode = "transaction"
default_pool_size = 20
reserve = 5
max_client_conn = 1000
"""


def installed() -> Path:
    try:
        return find_binary()
    except PgBouncerError as exc:
        pytest.skip(str(exc))


# -- what we build ---------------------------------------------------------------------------

def test_config_is_transaction_pooling_with_scram_and_the_variants_sizes(tmp_path: Path
                                                                         ) -> None:
    text = config_text(PgBouncerSettings("transaction", 20, 1000, 5), "127.0.0.1", 6432,
                       "127.0.0.1", 5433, tmp_path / "userlist.txt", tmp_path / "pid")
    lines = set(text.splitlines())
    assert {"* = host=127.0.0.1 port=5433", "listen_port = 6432", "pool_mode = transaction",
            "default_pool_size = 20", "reserve_pool_size = 5", "max_client_conn = 1000",
            "auth_type = scram-sha-256", "unix_socket_dir =", "server_reset_query ="} <= lines
    session = config_text(PgBouncerSettings("session", 4), "127.0.0.1", 1, "h", 2,
                          tmp_path / "u", tmp_path / "p")
    assert "server_reset_query = DISCARD ALL" in session.splitlines()


def test_a_folder_without_pgbouncer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PgBouncerError, match="holds no pgbouncer program"):
        find_binary(tmp_path)
    with pytest.raises(PgBouncerError, match="apt-get install pgbouncer.*--pgbouncer-bin"):
        find_binary(search=str(tmp_path))


def test_the_table_is_read_and_sets_django_for_transaction_pooling(tmp_path: Path) -> None:
    variant = parse_variant(write_variant(tmp_path, "v", GOOD + TABLE))
    assert variant.pgbouncer == PgBouncerSettings("transaction", 20, 1000, 5)
    assert variant.app_env()["DB_DISABLE_SERVER_SIDE_CURSORS"] == "1"
    assert variant.settings()["pgbouncer"]["reserve"] == 5
    plain = parse_variant(write_variant(tmp_path, "w", GOOD))
    assert plain.pgbouncer is None and plain.app_env()["DB_DISABLE_SERVER_SIDE_CURSORS"] == "0"


@pytest.mark.parametrize(("change", "key", "words"), [
    (('"transaction"', '"statement"'), "pgbouncer.pool_mode", "session, transaction"),
    (("default_pool_size = 20", "default_pool_size = 0"), "pgbouncer.default_pool_size",
     ">= 1"),
    (("reserve = 5", "reserve = -1"), "pgbouncer.reserve", ">= 0"),
    (("default_pool_size = 20", "default_pool_size = 95"), "pgbouncer.default_pool_size",
     "max_connections (100"),
    (("reserve = 5", "reserve = 5\nsize = 3"), "pgbouncer.size", "unknown key"),
    (("reserve = 5", 'reserve = "5"'), "pgbouncer.reserve", "must be int"),
])
def test_a_bad_table_names_the_file_and_key(tmp_path: Path, change: tuple[str, str], key: str,
                                            words: str) -> None:
    path = write_variant(tmp_path, "v", GOOD + TABLE.replace(*change))
    with pytest.raises(VariantError) as info:
        parse_variant(path)
    assert str(path) in str(info.value) and f"'{key}'" in str(info.value)
    assert words in str(info.value)


def test_conn_max_age_sweep_is_a_column_per_value_and_skips_it_over_djangos_pool() -> None:
    variants = discover()
    chosen = [variants["async_uvicorn"], variants["async_pooled"]]
    config = RunConfig(conn_max_ages=[0, 60], routes=["io_create"], latencies_ms=[0])
    columns, skipped = plan_columns(config, chosen, None)
    ages = {name: v.conn_max_age for name, v in columns}
    assert ages == {"async_uvicorn+cma0": 0, "async_uvicorn+cma60": 60, "async_pooled+cma0": 0}
    assert list(skipped) == ["async_pooled+cma60"]
    assert "django.pool" in skipped["async_pooled+cma60"]
    assert columns[1][1].app_env()["DB_CONN_MAX_AGE"] == "60"
    cells = plan_cells(config, chosen, seed=1)
    assert sorted(c.column for c in cells) == sorted(ages)


def test_without_pgbouncer_its_variants_are_skipped_with_the_reason() -> None:
    variants = discover()
    chosen = [variants["async_uvicorn"], variants["async_pgbouncer"]]
    config = RunConfig(pg_max_connections=[100], routes=["cpu"], latencies_ms=[0])
    columns, skipped = plan_columns(config, chosen, "no pgbouncer program")
    assert [name for name, _ in columns] == ["async_uvicorn+pg100"]
    assert skipped == {"async_pgbouncer+pg100": "async_pgbouncer needs PgBouncer: no "
                                                "pgbouncer program"}
    assert [c.column for c in plan_cells(config, chosen, 1, "no pgbouncer program")] == [
        "async_uvicorn+pg100"]


# -- for real ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_pgbouncer_bounds_postgres_connections_and_queues_the_rest(
        pg_cluster: PostgresCluster, pg_template: str, tmp_path: Path) -> None:
    """The async app opens a connection per in-flight request; behind PgBouncer those are
    client connections, and PostgreSQL sees at most pool + reserve. Nobody fails: clients
    wait in PgBouncer's queue while the table is locked."""
    installed()
    variant = discover()["async_pgbouncer"]
    assert variant.pgbouncer is not None
    variant = replace(variant, pgbouncer=replace(variant.pgbouncer, default_pool_size=3,
                                                 reserve_pool_size=1))
    seen: list[tuple[int, int]] = []
    with pgbouncer_for(pg_cluster, variant) as pooler, serving_through(
            pg_cluster, pooler, variant, "t_pgb_bound", tmp_path) as (base, db):
        assert pooler is not None
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen.append(pooler.connections())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            peak, answers = load_under_lock(pg_cluster, base, db, concurrency=20, hold_s=3.0)
        finally:
            stop.set()
            sampler.join()
    assert 1 <= peak <= 4, peak
    assert all(status == 200 for status, _ in answers), answers
    assert max(c for c, _ in seen) >= 10, seen  # the app's connections, queued in PgBouncer
    assert 1 <= max(s for _, s in seen) <= 4, seen


@pytest.mark.integration
def test_asgi_conn_max_age_leak_shows_in_postgres_connections(
        pg_cluster: PostgresCluster, pg_template: str, tmp_path: Path) -> None:
    """Under ASGI a persistent connection belongs to the request's thread, which ends with
    the request: with CONN_MAX_AGE > 0 the connections stay open after the requests, so
    they grow with concurrency (the known leak); with 0 each request closes its own."""
    base_variant = discover()["async_uvicorn"]
    left: dict[int, int] = {}
    for age in (0, 60):
        variant = base_variant.with_overrides(conn_max_age=age)
        with serving(pg_cluster, variant, f"t_cma{age}", tmp_path) as (base, db):
            with ThreadPoolExecutor(max_workers=15) as pool:
                answers = list(pool.map(lambda _: call(f"{base}/io_read/"), range(60)))
            assert all(status == 200 for status, _ in answers)
            time.sleep(0.5)
            left[age] = app_connections(pg_cluster, db)
    assert left[0] == 0, left
    assert left[60] >= 5, left


@pytest.mark.integration
def test_a_killed_harness_pgbouncer_is_stopped_by_the_next_start(
        pg_cluster: PostgresCluster, pg_template: str) -> None:
    program = installed()
    settings = PgBouncerSettings(default_pool_size=2)
    assert pg_cluster.port is not None
    first = PgBouncer(program, pg_cluster.pgbouncer_folder)
    first.start(settings, pg_cluster.host, pg_cluster.port, pg_cluster.user,
                pg_cluster.scram_secret())
    orphan = psutil.Process(first.pids()[0])
    first._proc = None  # what a SIGKILLed harness leaves: the process, its pid file
    second = PgBouncer(program, pg_cluster.pgbouncer_folder)
    try:
        second.start(settings, pg_cluster.host, pg_cluster.port, pg_cluster.user,
                     pg_cluster.scram_secret())
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
        assert second.running
    finally:
        second.stop()
        if orphan.is_running():
            orphan.kill()
    assert not second.pids()
    assert not (pg_cluster.pgbouncer_folder / "userlist.txt").exists()


@pytest.mark.integration
def test_ctrl_c_mid_cell_leaves_no_pgbouncer_and_the_cell_records_it(tmp_path: Path) -> None:
    """`bench run` of a PgBouncer variant: its PgBouncer runs beside the server during the
    load, is counted in resources.csv, and SIGINT leaves no pgbouncer process behind."""
    installed()
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--variants", "async_pgbouncer", "--routes",
         "io_read", "--latencies", "0", "--profile", "smoke", "--latency-backend", "none",
         "--out", str(out), "--rows", "2000", "--cpu-loop", "1000", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cell_dir = out / "cells" / "async_pgbouncer__io_read__0ms__r1"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and not (cell_dir / ".locust").is_dir():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(3)  # a few resource samples under load
        poolers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if c.name() == "pgbouncer"]
        assert len(poolers) == 1, poolers
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert not poolers[0].is_running()
    run = json.loads((out / "run.json").read_text())
    assert run["pgbouncer_version"].startswith("PgBouncer") and run["skipped"] == []
    record = json.loads((cell_dir / "cell.json").read_text())
    assert record["status"] == "interrupted"
    assert record["settings"]["pgbouncer"]["default_pool_size"] == 20
    with (cell_dir / "resources.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and max(int(r["pgbouncer_clients"]) for r in rows) >= 1
    assert all(0 < float(r["pgbouncer_rss_mib"]) for r in rows)
    assert all(int(r["db_connections"]) <= 25 for r in rows)


def test_docker_mode_skips_pgbouncer_variants_with_a_reason() -> None:
    """The hook alone (the Docker engine is tests/test_docker.py's): Docker mode provides
    no PgBouncer, so plan_columns skips those variants and keeps the rest."""
    from bench.docker import DockerRunner

    variants = discover()
    chosen = [variants["async_pgbouncer"], variants["sync_gthread"]]
    program, problem = DockerRunner._find_pgbouncer(
        cast(DockerRunner, SimpleNamespace(variants=chosen)))
    assert program is None and problem and "Docker mode does not provide PgBouncer" in problem
    columns, skipped = plan_columns(RunConfig(), chosen, problem)
    assert [name for name, _ in columns] == ["sync_gthread"]
    assert list(skipped) == ["async_pgbouncer"]
    assert DockerRunner._find_pgbouncer(cast(DockerRunner, SimpleNamespace(
        variants=chosen[1:]))) == (None, None)
