"""Fuzz io_create with random form bodies (hypothesis) against real servers of each views
flavour: a form with both fields valid gets 200 and exactly the posted row; any other form,
a missing field among them, gets 400 with nothing written; never a 500, never a partial row."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import request_json, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.postgres import PostgresCluster
from bench.variants import discover

# One xdist worker: the module's server fixture starts each flavour once.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("fuzz")]

FLAVOURS = ["sync_gunicorn", "async_uvicorn", "async_native"]
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=150)
field_values = st.one_of(text, st.just(""), st.just(" "), st.text(min_size=95, max_size=110),
                         st.just("a\x00b"))
forms = st.dictionaries(st.sampled_from(["title", "content", "other", "TITLE"]), field_values,
                        max_size=4)
raw_bodies = st.binary(max_size=300)
TITLE_MAX, CONTENT_MAX = 100, 10_000  # Post.title's length; POSTS_FIELD_MAX's default


def acceptable(form: dict[str, str]) -> bool:
    """What io_create must accept: both fields present, not blank, short enough, no NUL."""
    for name, limit in (("title", TITLE_MAX), ("content", CONTENT_MAX)):
        value = form.get(name)
        if value is None or not value.strip() or len(value) > limit or "\x00" in value:
            return False
    return True



@pytest.fixture(scope="module", params=FLAVOURS)
def server(request: pytest.FixtureRequest, pg_cluster: PostgresCluster, pg_template: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    variant = discover()[request.param]
    with serving(pg_cluster, variant, f"t_fuzz_{variant.name}",
                 tmp_path_factory.mktemp("fuzz")) as (base, db):
        yield f"{base}/io_create/", db


def post(url: str, body: bytes) -> tuple[int, Any]:
    return request_json(url, body, timeout_s=30)


def count(cluster: PostgresCluster, db: str) -> int:
    with cluster.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM posts_post").fetchone()[0])


def check(cluster: PostgresCluster, db: str, url: str, body: bytes,
          sent: dict[str, str] | None) -> None:
    """`sent`: the form `body` encodes, so the answer must be the one acceptable() gives."""
    before = count(cluster, db)
    status, answer = post(url, body)
    after = count(cluster, db)
    assert status in (200, 400), (status, answer, body[:200])
    if sent is not None:
        assert status == (200 if acceptable(sent) else 400), (status, answer, sent)
    if status == 400:
        assert answer["error"] == "bad_request"
        assert after == before, "a refused request wrote a row"
        return
    assert after == before + 1
    with cluster.connect(db) as conn:
        row = conn.execute("SELECT title, content FROM posts_post WHERE id = %s",
                           (answer["id"],)).fetchone()
    assert row == (answer["title"], answer["content"])
    if sent is not None:
        assert row == (sent["title"], sent["content"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=forms)
def test_random_forms(server: tuple[str, str], pg_cluster: PostgresCluster,
                      form: dict[str, str]) -> None:
    url, db = server
    check(pg_cluster, db, url, urllib.parse.urlencode(form).encode(), form)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=raw_bodies)
def test_random_raw_bodies(server: tuple[str, str], pg_cluster: PostgresCluster,
                           body: bytes) -> None:
    url, db = server
    check(pg_cluster, db, url, body, None)


@pytest.mark.parametrize("form", [
    {"content": "no title"}, {"title": "no content"}, {}, {"other": "x"},
    {"TITLE": "x", "content": "field names are case-sensitive"},
    {"title": "x", "CONTENT": "field names are case-sensitive"},
])
def test_a_missing_field_is_refused_and_writes_nothing(
        server: tuple[str, str], pg_cluster: PostgresCluster, form: dict[str, str]) -> None:
    url, db = server
    before = count(pg_cluster, db)
    status, answer = post(url, urllib.parse.urlencode(form).encode())
    assert (status, answer["error"]) == (400, "bad_request"), answer
    assert "is required" in answer["detail"], answer
    assert count(pg_cluster, db) == before
    check(pg_cluster, db, url, urllib.parse.urlencode(form).encode(), form)


def test_the_fuzzer_can_fail(server: tuple[str, str], pg_cluster: PostgresCluster) -> None:
    """check() catches a server that writes a row for a form with a field missing: here the
    body does carry content, which the server rightly stores, while `sent` claims it was
    missing, so check() expects the 400 a missing field must get."""
    url, db = server
    with pytest.raises(AssertionError, match="no content"):
        check(pg_cluster, db, url, b"title=no+content&content=y", {"title": "no content"})
    with pytest.raises(AssertionError):
        check(pg_cluster, db, url, b"title=x&content=y", {"title": "x", "content": "other"})
