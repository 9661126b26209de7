"""Latency by TCP proxy: works anywhere, no root, no kernel module.

Two proxies, each its own process: one in front of the server (delays the bytes the server
sends back to clients) and one in front of PostgreSQL (delays the bytes the server sends to
the database). Each chunk is released L ms after it arrived, in order. The program is the
C relay (delay_relay.c) where this machine can compile it, else its Python twin
(delay_proxy.py): the same arguments and behaviour (tests/test_latency.py runs both);
bench/latency/relay.py chooses and builds.

What the proxies cost: sync_gunicorn io_create/ 0 ms (a PostgreSQL connection per request,
about sixteen messages through them) through the C relay kept in at 0 ms against no proxy,
0.990 of its steady sRPS over 8 interleaved repeats (95% 0.952-1.036;
benchmarks/proxy_overhead.py --end-to-end); request by request +2.1-2.5% (+0.15-0.19 ms),
where the Python proxy added 6.3-7.9% and HAProxy 5.3-5.9% in the runs between (--requests
--relay python|haproxy). At L > 0 that hop is under 0.1% of what L adds to such a request (2L per
connection plus L per round trip).

At 0 ms there is no proxy all the same: the server dials PostgreSQL and Locust dials the
server directly, as with --latency-backend none, since netem at 0 ms adds nothing to the
path and a proxy is still a process every message wakes. BENCH_PROXY_AT_ZERO=1 keeps the
proxies at 0 ms, to measure their hop.

This module is the harness's side: starting a proxy process, reading the address it
listens on, stopping it. What the proxy does not model is in delay_proxy.py's docstring.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import IO

from bench.latency import relay
from bench.latency.base import LatencyError, LatencySession
from bench.processes import child_setup, stop_process

# Measured against netem inside User-Mode Linux (benchmarks/latency_fidelity.py; the
# README's latency section has the table). The report quotes it in the proxy's caveat.
FIDELITY_NOTE = (
    "Measured against netem (inside User-Mode Linux, benchmarks/latency_fidelity.py: "
    "io_create/ at 0 and 100 ms, 3 interleaved rounds): the proxy's 100/0 ratio of steady "
    "sRPS is within half a point of netem's, for sync_gunicorn (13.6% vs 13.2%) and "
    "async_unlimited (63.9% vs 63.6%), with the Python proxy; with the C relay, on a slower "
    "guest, +2.0 and -1.4 points (30.1% vs 28.1%, 81.0% vs 82.4%), the Python proxy there "
    "+1.1 and -3.0; async's rounds scatter by up to 16 points.")
# SCHED_FIFO priority of the proxies (delay_proxy.py says why). Low among real-time
# priorities: the kernel's own real-time threads stay ahead of it.
REALTIME_PRIORITY = 10
READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
#: Set to 1 to keep the proxies in the path at 0 ms (ProxySession).
AT_ZERO_ENV = "BENCH_PROXY_AT_ZERO"


CAP_SYS_NICE = 23  # linux/capability.h


def realtime_permitted() -> bool:
    """Whether a proxy started from here may run as a real-time task: CAP_SYS_NICE (root
    has it, unless a container dropped it), or an RLIMIT_RTPRIO that allows
    REALTIME_PRIORITY."""
    import resource

    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("CapEff:"))
        if int(line.split()[1], 16) >> CAP_SYS_NICE & 1:
            return True
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return soft == resource.RLIM_INFINITY or soft >= REALTIME_PRIORITY


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The proxy's first line of output, or "" if it exits or stays silent too long."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return proc.stdout.readline()


@dataclass(eq=False)
class ProxyProcess:
    """One proxy, as a child process; start() returns the address it listens on."""

    upstream: tuple[str, int]
    delay_ms: float
    direction: str
    listen_host: str = "127.0.0.1"
    cpus: list[int] | None = None
    #: "c" or "python"; None: as bench/latency/relay.py chooses (the C relay where it builds).
    relay: str | None = None
    proc: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    errors: IO[bytes] | None = field(default=None, init=False, repr=False)
    #: The event loop the proxy said it runs on ("epoll": the C relay; "uvloop" or
    #: "asyncio": the Python proxy), once started.
    event_loop: str | None = field(default=None, init=False)
    #: Its scheduling policy, as it reported it: "fifo", or "other" where not permitted.
    sched: str | None = field(default=None, init=False)

    def command(self) -> list[str]:
        return [*relay.choose(self.relay).command, "--listen", f"{self.listen_host}:0",
                "--upstream", f"{self.upstream[0]}:{self.upstream[1]}",
                "--delay-ms", str(self.delay_ms), "--delay-direction", self.direction,
                "--realtime-priority", str(REALTIME_PRIORITY)]

    def start(self) -> tuple[str, int]:
        # stderr to a file, never a pipe nobody reads: asyncio's warnings about reset
        # connections would fill a pipe and block the proxy mid-run.
        self.errors = tempfile.TemporaryFile()  # closed in stop()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                     stderr=self.errors, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True,
                                     preexec_fn=child_setup(self.cpus))
        line = _read_line(self.proc, READY_TIMEOUT_S)
        if not line.startswith("listening "):
            self.errors.seek(0)
            err = self.errors.read().decode(errors="replace")
            self.stop()
            raise LatencyError(f"latency proxy did not start: {(line or err).strip()[:300]}")
        fields = line.split()  # "listening HOST:PORT loop=NAME sched=POLICY"
        # NAME: epoll (the C relay), uvloop or asyncio (the Python proxy).
        named = dict(f.split("=", 1) for f in fields[2:] if "=" in f)
        self.event_loop = named.get("loop")
        self.sched = named.get("sched")
        host, _, port = fields[1].rpartition(":")
        return host, int(port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc, STOP_GRACE_S)
        if proc.stdout:
            proc.stdout.close()
        if self.errors is not None:
            self.errors.close()
            self.errors = None


def proxy_at_zero() -> bool:
    """Whether the proxies stand in the path at 0 ms too (BENCH_PROXY_AT_ZERO=1): only to
    measure their own cost (benchmarks/proxy_overhead.py --end-to-end)."""
    return os.environ.get(AT_ZERO_ENV, "") == "1"


def proxied(latency_ms: float) -> bool:
    """Whether a cell at `latency_ms` goes through the proxies (locally and in Docker mode):
    at L > 0, and at 0 ms only with BENCH_PROXY_AT_ZERO=1."""
    return latency_ms > 0 or proxy_at_zero()


class ProxySession(LatencySession):
    """Proxies in front of the server and of PostgreSQL at L > 0; at 0 ms, the direct path
    (module docstring)."""

    backend = "proxy"

    def __init__(self, latency_ms: int, cpus: list[int] | None = None) -> None:
        super().__init__(latency_ms)
        self.cpus = cpus
        self.proxies: list[ProxyProcess] = []
        #: Whether this cell's path goes through proxies (not at 0 ms, unless asked).
        self.proxied = proxied(latency_ms)

    def _start(self, upstream: tuple[str, int], direction: str) -> tuple[str, int]:
        if not self.proxied:
            return upstream
        proxy = ProxyProcess(upstream, self.latency_ms, direction, cpus=self.cpus)
        self.proxies.append(proxy)
        return proxy.start()

    def db_endpoint(self, pg_host: str, pg_port: int) -> tuple[str, int]:
        return self._start((pg_host, pg_port), "downstream")

    def client_endpoint(self, server_port: int) -> tuple[str, int]:
        return self._start((self.server_bind_host, server_port), "upstream")

    def pids(self) -> list[int]:
        return [p.pid for p in self.proxies if p.pid is not None]

    def event_loops(self) -> list[str]:
        """The event loop each running proxy reported ("epoll", "uvloop" or "asyncio")."""
        return [p.event_loop for p in self.proxies if p.event_loop is not None]

    def schedulings(self) -> list[str]:
        """The scheduling policy each running proxy reported ("fifo" or "other")."""
        return [p.sched for p in self.proxies if p.sched is not None]

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        self.proxies.clear()
