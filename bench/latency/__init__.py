"""Latency injection: "every byte the server sends is late by L ms".

Backends side by side behind one interface (base.LatencySession): netem.py (faithful,
root + sch_netem), proxy.py (anywhere), none.py; auto.py picks one.
"""

from bench.latency.auto import BACKENDS, open_latency, resolve_backend
from bench.latency.base import LatencyError, LatencySession

__all__ = ["BACKENDS", "LatencyError", "LatencySession", "open_latency", "resolve_backend"]
