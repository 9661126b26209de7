"""Every shipped variant, for real: embedded PostgreSQL, the variant's server process,
each route answering as the study's app does, and bad input refused with nothing written."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import request_json, serving

from bench.variants import Variant, discover
from bench.verify import expected_ct, verify_routes

# One xdist worker: the module's server fixture starts each variant once.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("app_variants")]

CPU_LOOP = 1000
CPU_MS = 20  # cpu/'s CPU-time budget (the runs' default kind of cpu/ work)
VARIANTS = sorted(discover())


def call(url: str, data: dict[str, str] | None = None, method: str | None = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    body = raw if raw is not None else (
        urllib.parse.urlencode(data).encode() if data is not None else None)
    return request_json(url, body, method, timeout_s=30)


@pytest.fixture(scope="module", params=VARIANTS)
def served(request: pytest.FixtureRequest, pg_cluster, pg_template,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Variant, str, Any, str]]:
    variant = discover()[request.param]
    with serving(pg_cluster, variant, f"t_{variant.name}", tmp_path_factory.mktemp(
            request.param), cpu_loop=CPU_LOOP, cpu_ms=CPU_MS) as (base, dbname):
        yield variant, base, pg_cluster, dbname


def row_count(cluster, dbname: str) -> int:
    with cluster.connect(dbname) as conn:
        return int(conn.execute("SELECT count(*) FROM posts_post").fetchone()[0])


def test_routes_answer_like_the_study(served, pg_template_rows) -> None:
    variant, base, cluster, dbname = served
    # raises with the reason if wrong
    verify_routes(base, CPU_LOOP, pg_template_rows, cpu_ms=CPU_MS)

    # every server and flavour of the views spends the budget, whatever the loop
    status, body = call(f"{base}/cpu/")
    assert status == 200 and set(body) == {"ct", "turns"}, body
    assert body["turns"] > 0 and body["ct"] == expected_ct(body["turns"])

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
