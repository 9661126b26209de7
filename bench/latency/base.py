"""The one small interface every latency backend implements.

"Every byte the server sends is late by L ms": a session says where PostgreSQL listens,
where the server binds, how its command is wrapped, and which addresses the server and
the load generator dial so that the server's outgoing bytes are delayed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from bench.net import free_port


class LatencyError(Exception):
    """A latency backend that cannot be used here; one line for the user."""


#: What --latency-backend accepts; `auto` resolves to one of the others.
BACKENDS = ("auto", "netem", "proxy", "none")


def check_backend_name(name: str) -> str:
    """`name` if it is one of BACKENDS, else a LatencyError listing them."""
    if name not in BACKENDS:
        raise LatencyError(f"unknown latency backend {name!r}; valid: {', '.join(BACKENDS)}")
    return name


class LatencySession(ABC):
    """Latency for one cell. Use as a context manager; close() undoes everything."""

    backend: str = ""
    #: Address PostgreSQL listens on (reachable from where the server runs).
    pg_listen_host: str = "127.0.0.1"
    #: Address the server binds to.
    server_bind_host: str = "127.0.0.1"
    #: Prepended to the server's command (e.g. `ip netns exec NS`).
    command_prefix: list[str] = []

    def __init__(self, latency_ms: int) -> None:
        if latency_ms < 0:
            raise LatencyError(f"latency must be >= 0 ms, got {latency_ms}")
        self.latency_ms = latency_ms

    def server_port(self) -> int:
        """A port the server can bind to on server_bind_host."""
        return free_port(self.server_bind_host)

    @abstractmethod
    def db_endpoint(self, pg_host: str, pg_port: int) -> tuple[str, int]:
        """The (host, port) the server dials to reach PostgreSQL at pg_host:pg_port."""

    @abstractmethod
    def client_endpoint(self, server_port: int) -> tuple[str, int]:
        """The (host, port) the load generator dials to reach the server."""

    def pids(self) -> list[int]:
        """Helper processes this session runs (for CPU pinning and accounting)."""
        return []

    @abstractmethod
    def close(self) -> None:
        """Undo everything the session set up; safe to call twice."""

    def __enter__(self) -> LatencySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
