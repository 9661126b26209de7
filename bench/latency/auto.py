"""Which backend runs: `auto` is netem where it works, else the proxy."""

from __future__ import annotations

import functools

from bench.latency import netem
from bench.latency.base import LatencyError, LatencySession, check_backend_name
from bench.latency.none import NoLatency
from bench.latency.proxy import ProxySession


@functools.cache
def netem_problem() -> str | None:
    """Why netem cannot run here (None: it can). Probed once per process."""
    return netem.probe()


def resolve_backend(requested: str) -> tuple[str, str]:
    """(backend that will run, why) for --latency-backend; LatencyError if impossible."""
    check_backend_name(requested)
    if requested == "none":
        return "none", "no latency injected (--latency-backend none)"
    if requested == "proxy":
        return "proxy", "requested (--latency-backend proxy)"
    problem = netem_problem()
    if requested == "netem":
        if problem:
            raise LatencyError(f"netem cannot run here: {problem}; use --latency-backend proxy "
                               "(or auto)")
        return "netem", "requested (--latency-backend netem)"
    if problem:
        return "proxy", f"netem unavailable: {problem}"
    return "netem", "auto: netem works on this machine"


def open_latency(backend: str, latency_ms: int, cpus: list[int] | None = None
                 ) -> LatencySession:
    """A session of a resolved backend ("netem", "proxy" or "none") for one cell."""
    if backend == "netem":
        return netem.NetemSession(latency_ms)
    if backend == "proxy":
        return ProxySession(latency_ms, cpus)
    if backend == "none":
        return NoLatency(latency_ms)
    raise LatencyError(f"unknown latency backend {backend!r}")
