"""Input checks shared by every flavour of the views."""

from __future__ import annotations

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
