"""Verify before measuring: a cell's route must answer correctly before load starts
(the runner checks the cell's own route, and io_read/ beside io_create/;
tests/test_app_variants.py checks all three on every variant).

As TechEmpower checks responses before it counts them, a cell whose server answers
wrongly is failed, never reported as a slow success.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ROUTES = ("cpu", "io_read", "io_create")
POST_KEYS = {"id", "title", "content", "created_at", "updated_at"}
READ_LIMIT = 25


class VerificationError(Exception):
    """A route answered wrongly; the message says which and how."""


def expected_ct(loop: int) -> int:
    """sum(i*i for i in range(loop)), in closed form."""
    n = loop - 1
    return n * (n + 1) * (2 * n + 1) // 6 if loop > 0 else 0


def _request(url: str, data: dict[str, str] | None, timeout_s: float) -> tuple[int, Any]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    if not url.startswith(("http://", "https://")):
        raise VerificationError(f"{url}: only http(s) URLs can be verified")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (http URL we built)
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise VerificationError(f"{url}: no answer ({exc})") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise VerificationError(f"{url}: HTTP {status}, body is not JSON: {raw[:200]!r}") from None


def _check_post(route: str, post: Any) -> None:
    if not isinstance(post, dict) or set(post) != POST_KEYS:
        raise VerificationError(f"{route}: a post must have keys {sorted(POST_KEYS)}, got {post!r}")
    uuid.UUID(str(post["id"]))


def verify_cpu(base: str, cpu_loop: int, timeout_s: float, cpu_ms: float | None = None
               ) -> int | None:
    """cpu/ answers the study's sum: over range(cpu_loop), or, with a CPU-time budget
    (`cpu_ms`), over range(turns) for the turns it says it did. Returns those turns (None
    for a fixed loop). A --target started with a budget answers with its turns, which
    are accepted whatever loop this run assumed."""
    status, body = _request(f"{base}/cpu/", None, timeout_s)
    if isinstance(body, dict) and "turns" in body:
        turns = body["turns"]
        if (status == 200 and set(body) == {"ct", "turns"} and isinstance(turns, int)
                and not isinstance(turns, bool) and turns > 0
                and body["ct"] == expected_ct(turns)):
            return int(turns)
        raise VerificationError(f"cpu/: want 200 {{'ct': sum(i*i for i in range(turns)), "
                                f"'turns': turns > 0}}, got {status} {body!r}")
    if cpu_ms:
        raise VerificationError(f"cpu/: want 200 {{'ct', 'turns'}} (a budget of {cpu_ms:g} ms "
                                f"of CPU a request), got {status} {body!r}")
    want = expected_ct(cpu_loop)
    if status != 200 or body != {"ct": want}:
        raise VerificationError(f"cpu/: want 200 {{'ct': {want}}}, got {status} {body!r}")
    return None


def verify_io_read(base: str, rows: int | None, timeout_s: float) -> int:
    status, body = _request(f"{base}/io_read/", None, timeout_s)
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("ct"), int):
        raise VerificationError(f"io_read/: want 200 with an integer 'ct', got {status} {body!r}")
    # io_create/'s check runs at the same time: its post may be counted already.
    if rows is not None and body["ct"] not in (rows, rows + 1):
        raise VerificationError(f"io_read/: want ct={rows} (the template's rows), got {body['ct']}")
    posts = body.get("posts")
    if not isinstance(posts, list) or len(posts) != min(READ_LIMIT, body["ct"]):
        raise VerificationError(f"io_read/: want {min(READ_LIMIT, body['ct'])} posts, "
                                f"got {posts if not isinstance(posts, list) else len(posts)}")
    for post in posts:
        _check_post("io_read/", post)
    return int(body["ct"])


def verify_io_create(base: str, timeout_s: float) -> None:
    fields = {"title": f"verify {uuid.uuid4().hex[:8]}", "content": "verification post"}
    status, body = _request(f"{base}/io_create/", fields, timeout_s)
    if status != 200:
        raise VerificationError(f"io_create/: want 200, got {status} {body!r}")
    _check_post("io_create/", body)
    if body["title"] != fields["title"] or body["content"] != fields["content"]:
        raise VerificationError(f"io_create/: the post returned is not the one sent: {body!r}")
    status, body = _request(f"{base}/io_create/", {"title": "no content"}, timeout_s)
    if status != 400 or not isinstance(body, dict) or body.get("error") != "bad_request":
        raise VerificationError(f"io_create/ without content: want 400 bad_request, "
                                f"got {status} {body!r}")


def verify_routes(
    base_url: str, cpu_loop: int, rows: int | None, timeout_s: float = 60.0,
    routes: tuple[str, ...] = ROUTES, cpu_ms: float | None = None,
) -> dict[str, float]:
    """Raise VerificationError unless every route answers as the study's app does.

    The routes are checked at the same time (one after the other took up to 4 s a cell at
    200 ms of latency); returns the milliseconds each route's check took, which shows the
    added latency (cell.json `verification_ms`).
    """
    base = base_url.rstrip("/")
    checks: dict[str, Callable[[], object]] = {}
    if "io_read" in routes or "io_create" in routes:
        checks["io_read"] = lambda: verify_io_read(base, rows, timeout_s)
    if "io_create" in routes:
        checks["io_create"] = lambda: verify_io_create(base, timeout_s)
    if "cpu" in routes:
        checks["cpu"] = lambda: verify_cpu(base, cpu_loop, timeout_s, cpu_ms)

    def timed(check: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        check()
        return round((time.perf_counter() - t0) * 1000, 1)

    with ThreadPoolExecutor(max_workers=len(checks) or 1) as pool:
        futures = {route: pool.submit(timed, check) for route, check in checks.items()}
        return {route: future.result() for route, future in futures.items()}
