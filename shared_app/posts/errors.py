"""Every error is answered as JSON {"error": KIND, "detail": ...}.

Load generators record failures by kind ("too_many_clients", "pool_timeout", ...), so
the kind must survive DEBUG being off; the detail never carries a traceback.
"""

from __future__ import annotations

import logging

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, JsonResponse

log = logging.getLogger("posts")

# Substrings of PostgreSQL's and psycopg's messages, matched over the exception chain.
_TOO_MANY_CLIENTS = ("too many clients", "remaining connection slots are reserved")


def error(status: int, kind: str, detail: str = "") -> JsonResponse:
    body: dict[str, str] = {"error": kind}
    if detail:
        body["detail"] = detail
    return JsonResponse(body, status=status)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def classify(exc: BaseException) -> tuple[int, str]:
    """(status, kind) for an exception raised while serving a request."""
    chain = _chain(exc)
    if any(isinstance(e, SuspiciousOperation) for e in chain):
        # Oversized bodies, too many fields: the client's fault, not the server's.
        return 400, "bad_request"
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if "PoolTimeout" in names:
        return 503, "pool_timeout"
    if any(marker in text for marker in _TOO_MANY_CLIENTS):
        return 503, "too_many_clients"
    if names & {"OperationalError", "InterfaceError"}:
        return 503, "database_unavailable"
    return 500, "internal"


def response_for_exception(exc: BaseException) -> JsonResponse:
    status, kind = classify(exc)
    log.error("request failed: %s (%s: %s)", kind, type(exc).__name__, exc)
    return error(status, kind)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error(400, "bad_request", "malformed request")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error(404, "not_found", "no such route")


def server_error(request: HttpRequest) -> JsonResponse:
    return error(500, "internal")
