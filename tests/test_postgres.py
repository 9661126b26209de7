"""The embedded PostgreSQL: unprivileged user, password auth on TCP, template and clones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import psycopg
import pytest

from bench.postgres import PG_OS_USER, PostgresCluster, PostgresError, post_rows_copy_text

pytestmark = pytest.mark.integration

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")


def test_runs_unprivileged_with_password_auth(pg_cluster: PostgresCluster) -> None:
    owner = psutil.Process(pg_cluster.postmaster_pid).username()
    if os.geteuid() == 0:
        assert owner == PG_OS_USER
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=pg_cluster.host, port=pg_cluster.port, user=pg_cluster.user,
                        password="wrong", dbname="postgres", connect_timeout=5)
    with pg_cluster.connect() as conn:
        method = conn.execute("SELECT auth_method FROM pg_hba_file_rules "
                              "WHERE type = 'host' LIMIT 1").fetchone()
    assert method == ("scram-sha-256",)


def test_clones_start_from_the_template_and_are_independent(
        pg_cluster: PostgresCluster, pg_template: str, pg_template_rows: int) -> None:
    a = pg_cluster.clone_database("t_clone_a")
    b = pg_cluster.clone_database("t_clone_b")
    try:
        with pg_cluster.connect(a) as conn:
            assert conn.execute("SELECT count(*) FROM posts_post").fetchone() == (
                pg_template_rows,)
            conn.execute("INSERT INTO posts_post VALUES (gen_random_uuid(), 't', 'c', now(), "
                         "now())")
        with pg_cluster.connect(b) as conn:
            assert conn.execute("SELECT count(*) FROM posts_post").fetchone() == (
                pg_template_rows,)
        # A clone of the same name starts fresh again.
        pg_cluster.clone_database(a)
        with pg_cluster.connect(a) as conn:
            assert conn.execute("SELECT count(*) FROM posts_post").fetchone() == (
                pg_template_rows,)
    finally:
        pg_cluster.drop_database(a)
        pg_cluster.drop_database(b)
    with pg_cluster.connect() as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert not names & {a, b}


def test_template_rows_look_like_uuid4_posts() -> None:
    lines = post_rows_copy_text(1, 3).decode().splitlines()
    assert len(lines) == 3
    uid, title, *_ = lines[0].split("\t")
    assert uid[14] == "4" and uid[19] in "89ab" and len(uid) == 36
    assert title == "Post 1"


def test_restart_with_other_max_connections_and_stop(pg_cache_dir: Path) -> None:
    cluster = PostgresCluster(cache_dir=pg_cache_dir)
    try:
        cluster.start(max_connections=20)
        first = cluster.postmaster_pid
        with cluster.connect() as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("20",)
        cluster.start(max_connections=20)
        assert cluster.postmaster_pid == first  # same settings: kept
        cluster.start(max_connections=30)
        with cluster.connect() as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("30",)
        pid = cluster.postmaster_pid
    finally:
        cluster.close()
    assert pid and not psutil.pid_exists(pid)


def test_missing_binaries_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(PostgresError, match="pgserver"):
        PostgresCluster(cache_dir=tmp_path, pg_bin=tmp_path)


@pytest.mark.skipif(not (DEBIAN_PG15 / "postgres").is_file(),
                    reason="Debian's PostgreSQL 15 is not installed at /usr/lib/postgresql/15")
def test_other_binaries_with_pg_bin(pg_cache_dir: Path) -> None:
    with PostgresCluster(cache_dir=pg_cache_dir, pg_bin=DEBIAN_PG15) as cluster:
        cluster.start(max_connections=10)
        assert cluster.version.startswith("15")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_unreachable_cache_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PostgresError, match="cannot enter"):
        PostgresCluster(cache_dir=tmp_path / "cache").start()


def test_a_stale_postmaster_pid_naming_another_process_spares_it(pg_cache_dir: Path) -> None:
    """After a crash, postmaster.pid may name a pid that now belongs to anything."""
    bystander = subprocess.Popen(["sleep", "60"])
    cluster = PostgresCluster(cache_dir=pg_cache_dir)
    try:
        cluster.start(max_connections=10)
        assert cluster.data_dir is not None
        cluster.stop()
        (cluster.data_dir / "postmaster.pid").write_text(f"{bystander.pid}\n")
        cluster.start(max_connections=10)  # PostgreSQL refuses while the named pid lives
        assert bystander.poll() is None
        with cluster.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.close()
        bystander.kill()
        bystander.wait()


def test_a_postmaster_left_on_this_data_dir_is_stopped(pg_cache_dir: Path) -> None:
    """What a killed bench process leaves: its postmaster still runs on the slot's data dir."""
    cluster = PostgresCluster(cache_dir=pg_cache_dir)
    try:
        cluster.start(max_connections=10)
        orphan = cluster._proc
        assert orphan is not None
        cluster._proc = None  # forgotten, as by a process that died without stopping it
        cluster.start(max_connections=11)
        assert orphan.wait(timeout=5) is not None
        assert cluster.postmaster_pid != orphan.pid
    finally:
        cluster.close()
