"""No injected latency: the server and PostgreSQL are dialled directly on loopback."""

from __future__ import annotations

from bench.latency.base import LatencyError, LatencySession


class NoLatency(LatencySession):
    backend = "none"

    def __init__(self, latency_ms: int) -> None:
        super().__init__(latency_ms)
        if latency_ms:
            raise LatencyError(f"--latency-backend none cannot add {latency_ms} ms; use "
                               "--latencies 0 or --latency-backend auto|proxy|netem")

    def db_endpoint(self, pg_host: str, pg_port: int) -> tuple[str, int]:
        return pg_host, pg_port

    def client_endpoint(self, server_port: int) -> tuple[str, int]:
        return self.server_bind_host, server_port

    def close(self) -> None:
        """Nothing was set up."""
