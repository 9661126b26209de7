"""Latency injection: "every byte the server sends is late by L ms".

Backends side by side behind one interface (base.LatencySession): netem.py (faithful,
root + sch_netem), proxy.py (anywhere; the proxy program itself is delay_proxy.py), none.py;
auto.py picks one.
"""

from typing import Any

from bench.latency.base import BACKENDS, LatencyError, LatencySession

__all__ = ["BACKENDS", "LatencyError", "LatencySession", "open_latency", "resolve_backend"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the proxy program (`python -m bench.latency.delay_proxy`)
    # starts without importing every backend (auto.py imports them all).
    if name in ("open_latency", "resolve_backend"):
        from bench.latency import auto

        return getattr(auto, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
