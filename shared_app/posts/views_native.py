"""The routes on psycopg's AsyncConnectionPool directly: no ORM, no threads for DB work.

Django's ASGI handler has no lifespan events, so the pool is opened lazily by the first
request of each event loop and lives as long as the worker process.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from posts.models import post_json
from posts.validation import NewPost, cpu_answer, method_not_allowed, parse_new_post
from posts.views_sync import READ_LIMIT

_COLUMNS = "id, title, content, created_at, updated_at"
_pools: dict[int, AsyncConnectionPool[AsyncConnection[Any]]] = {}
_pool_lock: dict[int, asyncio.Lock] = {}

DEFAULT_POOL = {"min_size": 1, "max_size": 20, "timeout": 10.0}


def pool_options() -> dict[str, Any]:
    """The pool's sizes: DB_POOL when the deployment sets one, else DEFAULT_POOL."""
    raw = settings.DATABASES["default"].get("OPTIONS", {}).get("pool") or {}
    options = dict(DEFAULT_POOL)
    options.update({k: v for k, v in raw.items() if k in DEFAULT_POOL})
    return options


def _conninfo() -> str:
    db = settings.DATABASES["default"]
    return make_conninfo(
        host=db["HOST"], port=str(db["PORT"]), dbname=db["NAME"], user=db["USER"],
        password=db["PASSWORD"],
        # Same session time zone as Django's own connections, so answers are identical.
        options="-c TimeZone=UTC",
    )


async def get_pool() -> AsyncConnectionPool[AsyncConnection[Any]]:
    loop_id = id(asyncio.get_running_loop())
    pool = _pools.get(loop_id)
    if pool is not None:
        return pool
    lock = _pool_lock.setdefault(loop_id, asyncio.Lock())
    async with lock:
        if loop_id not in _pools:
            options = pool_options()
            pool = AsyncConnectionPool(
                _conninfo(), min_size=int(options["min_size"]), max_size=int(options["max_size"]),
                timeout=float(options["timeout"]), open=False,
                kwargs={"autocommit": True},
            )
            await pool.open()
            _pools[loop_id] = pool
    return _pools[loop_id]


async def cpu(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "GET"):
        return refused
    return JsonResponse(cpu_answer(settings.POSTS_CPU_LOOP, settings.POSTS_CPU_MS))


async def io_create(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "POST"):
        return refused
    new = parse_new_post(request)
    if not isinstance(new, NewPost):
        return new
    now = timezone.now()
    pool = await get_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"INSERT INTO posts_post ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s) "  # noqa: S608
            f"RETURNING {_COLUMNS}",
            (uuid.uuid4(), new.title, new.content, now, now),
        )
        row = await cur.fetchone()
    assert row is not None
    return JsonResponse(post_json(*row))


async def io_read(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "GET"):
        return refused
    pool = await get_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {_COLUMNS} FROM posts_post LIMIT %s", (READ_LIMIT,))  # noqa: S608
        rows = await cur.fetchall()
        count_cur = await conn.execute("SELECT count(*) FROM posts_post")
        count_row = await count_cur.fetchone()
    assert count_row is not None
    return JsonResponse({"ct": count_row[0], "posts": [post_json(*r) for r in rows]})

