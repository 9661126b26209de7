"""Gunicorn worker classes that name Uvicorn's event loop and HTTP parser outright.

uvicorn-worker ships `UvicornWorker` (loop="auto", http="auto": uvloop and httptools when
they are importable, else asyncio and h11) and `UvicornH11Worker` (asyncio + h11). Nothing
there pins uvloop + httptools, and "auto" would silently fall back if either went missing,
so this subclass fails at boot instead: the variant's title stays true.
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker


class UvicornUvloopHttptoolsWorker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools"}
