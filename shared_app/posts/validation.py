"""Input checks shared by every flavour of the views."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from posts.errors import error

TITLE_MAX = 100  # Post.title is CharField(100)


@dataclass(frozen=True)
class NewPost:
    title: str
    content: str


def method_not_allowed(request: HttpRequest, allowed: str) -> JsonResponse | None:
    if request.method == allowed:
        return None
    response = error(405, "method_not_allowed", f"use {allowed}")
    response["Allow"] = allowed
    return response


def parse_new_post(request: HttpRequest) -> NewPost | JsonResponse:
    """A NewPost, or the 400 answer that says which field is wrong."""
    fields = {"title": TITLE_MAX, "content": settings.POSTS_FIELD_MAX}
    values: dict[str, str] = {}
    for name, limit in fields.items():
        value = request.POST.get(name)
        if value is None or value.strip() == "":
            return error(400, "bad_request", f"field {name!r} is required")
        if len(value) > limit:
            return error(400, "bad_request", f"field {name!r} is longer than {limit} characters")
        if "\x00" in value:
            # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the DB.
            return error(400, "bad_request", f"field {name!r} contains a NUL character")
        values[name] = value
    return NewPost(**values)


def cpu_count(loop: int) -> int:
    """The study's CPU-bound work: ct += i * i for i in range(loop)."""
    ct = 0
    for i in range(loop):
        ct += i * i
    return ct


# Turns between two reads of the thread's CPU clock in cpu_for: about 0.5-1 ms of work, so
# a request overshoots its budget by at most that, and the clock (a system call) costs
# under 0.1% of the loop.
CPU_CHUNK = 10_000


def cpu_for(ms: float) -> tuple[int, int]:
    """The same work, for `ms` milliseconds of this thread's CPU time instead of a fixed
    number of turns: (ct, turns), ct being the study's sum over range(turns).

    CPU time, not wall time: a request that waits for the GIL or for the core (other
    requests, other processes) does not spend its budget waiting, so every request costs
    the same CPU on any machine. A fixed loop costs what the machine's speed makes of it,
    and these machines' speed moves by up to 1.8x from one minute to the next.
    """
    ct = 0
    start = 0
    end_at = time.thread_time() + ms / 1000
    while True:
        for i in range(start, start + CPU_CHUNK):
            ct += i * i
        start += CPU_CHUNK
        if time.thread_time() >= end_at:
            return ct, start


def cpu_answer(loop: int, ms: float) -> dict[str, int]:
    """The cpu/ route's body: {"ct"} for a fixed loop (the study's), {"ct", "turns"} when
    the work has a CPU-time budget (`ms` > 0)."""
    if ms > 0:
        ct, turns = cpu_for(ms)
        return {"ct": ct, "turns": turns}
    return {"ct": cpu_count(loop)}
