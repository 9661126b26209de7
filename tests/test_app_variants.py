"""Every shipped variant, for real: embedded PostgreSQL, the variant's server process,
each route answering as the study's app does, and bad input refused with nothing written."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bench.net import free_port
from bench.server import ServerProcess, app_environment
from bench.variants import Variant, discover
from bench.verify import expected_ct, verify_routes

pytestmark = pytest.mark.integration

CPU_LOOP = 1000
VARIANTS = sorted(discover())


def call(url: str, data: dict[str, str] | None = None, method: str | None = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    body = raw if raw is not None else (
        urllib.parse.urlencode(data).encode() if data is not None else None)
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body else "GET"))
    if raw is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module", params=VARIANTS)
def served(request: pytest.FixtureRequest, pg_cluster, pg_template,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Variant, str, Any, str]]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    variant = discover()[request.param]
    dbname = pg_cluster.clone_database(f"t_{variant.name}")
    port = free_port("127.0.0.1")
    env = app_environment(variant, pg_cluster.app_env(dbname), ["127.0.0.1"], CPU_LOOP)
    server = ServerProcess(variant.server_command("127.0.0.1", port), env,
                           tmp_path / "server.log")
    server.start()
    try:
        server.wait_listening("127.0.0.1", port)
        yield variant, f"http://127.0.0.1:{port}", pg_cluster, dbname
    finally:
        server.stop()
        pg_cluster.drop_database(dbname)


def row_count(cluster, dbname: str) -> int:
    with cluster.connect(dbname) as conn:
        return int(conn.execute("SELECT count(*) FROM posts_post").fetchone()[0])


def test_routes_answer_like_the_study(served, pg_template_rows) -> None:
    variant, base, cluster, dbname = served
    verify_routes(base, CPU_LOOP, pg_template_rows)  # raises with the reason if wrong

    status, body = call(f"{base}/cpu/")
    assert (status, body) == (200, {"ct": expected_ct(CPU_LOOP)})

    status, created = call(f"{base}/io_create/", {"title": "hello", "content": "world"})
    assert status == 200 and created["title"] == "hello"
    with cluster.connect(dbname) as conn:
        row = conn.execute("SELECT title, content FROM posts_post WHERE id = %s",
                           (created["id"],)).fetchone()
    assert row == ("hello", "world")

    status, read = call(f"{base}/io_read/")
    assert status == 200
    assert read["ct"] == row_count(cluster, dbname)
    assert len(read["posts"]) == 25


@pytest.mark.parametrize(
    "fields",
    [{"title": "only a title"}, {"content": "only content"}, {"title": "", "content": "x"},
     {"title": "x" * 101, "content": "too long title"}, {"title": "t", "content": " "}],
)
def test_bad_io_create_is_400_and_writes_nothing(served, fields: dict[str, str]) -> None:
    variant, base, cluster, dbname = served
    before = row_count(cluster, dbname)
    status, body = call(f"{base}/io_create/", fields)
    assert status == 400 and body["error"] == "bad_request", body
    assert row_count(cluster, dbname) == before


def test_wrong_method_and_unknown_path(served) -> None:
    variant, base, cluster, dbname = served
    assert call(f"{base}/io_create/")[0] == 405
    assert call(f"{base}/io_read/", method="POST", raw=b"a=b")[0] == 405
    status, body = call(f"{base}/nope/")
    assert status == 404 and body["error"] == "not_found"
