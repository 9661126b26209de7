"""The delaying TCP proxy, as a program: what `python -m bench.latency.delay_proxy` runs.

Each chunk is released L ms after it arrived, in order, like Toxiproxy's latency toxic. A
closed connection (FIN) is passed on L ms late as well. bench/latency/proxy.py starts two
of these per cell (the harness side: ProxySession, ProxyProcess); Docker mode runs them
in a sidecar (docker/compose.proxy.yaml). This module imports nothing from the harness.

The TCP handshake, which the proxy cannot delay (the kernel completes it before accept()),
is charged to the connection's first message instead: under netem on the server's interface
a client's connect() takes d_up + d_down (its SYN is late by d_up, the SYN-ACK by d_down) and
its first message then d_up more, so the proxy holds what a client sends first until
2 d_up + d_down after it accepted the connection (d_up: the delay of what the client sends,
d_down: of what it is sent). For the server's PostgreSQL connections (downstream) that is
2L, for a client's connection to the server (upstream) L: what netem costs a new connection.
What it still does not model: connect() itself returns at once, so a protocol in which the
server speaks first would see its greeting early (HTTP and PostgreSQL clients speak first).
Its own cost is measured by benchmarks/proxy_overhead.py (round trip, throughput, and a real
cell through the proxy vs without it).

    python -m bench.latency.delay_proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:5432 \
        --delay-ms 100 --delay-direction downstream

It prints `listening HOST:PORT loop=NAME sched=POLICY` once it accepts connections (NAME:
EVENT_LOOP, uvloop or asyncio; POLICY: fifo or other, see --realtime-priority), and runs
until SIGTERM.

Written here rather than taken from a library: Toxiproxy is a Go binary (nothing to
install from PyPI), and the few Python proxies on PyPI have no per-chunk delay.
bench/latency/delay_relay.c is the same program in C, which adds a third of the time this
one adds to a request; the harness runs it wherever a C compiler builds it
(bench/latency/relay.py), and this one elsewhere and in Docker mode's sidecar.

Why uvloop: every message of every PostgreSQL connection wakes the proxy up for a read and
a write, on a core the server, PostgreSQL or Locust also needs; uvloop runs the loop in C
(libuv), so each message costs less CPU there. (At 0 ms a run leaves the proxies out of the
path altogether: bench/latency/proxy.py.)
asyncio is the fallback where uvloop cannot be imported (it has no Windows build, for one).

Why --realtime-priority (SCHED_FIFO): netem delays packets inside the kernel, in softirq
context, ahead of every process; a proxy is a process, and on a shared core each message
waited its turn behind the server, PostgreSQL or Locust. A cell that opens a PostgreSQL
connection per request sends about sixteen messages per request through the proxies, and
that wait cost sync_gunicorn io_create/ 0 ms 21% of its steady sRPS against no proxy
(benchmarks/proxy_overhead.py --end-to-end, which keeps the proxies in at 0 ms). As a
real-time task the proxy runs the moment a message arrives, like the kernel's network
stack; it sleeps between messages, and the kernel's real-time throttling
(sched_rt_runtime_us, 95% by default) keeps it from locking a core. Where the policy is
not permitted (not root, no CAP_SYS_NICE) it stays on the normal scheduler and says so in
its ready line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import cast

try:
    from uvloop import new_event_loop
    EVENT_LOOP = "uvloop"
except ImportError:  # no build for this platform: asyncio's own loop
    from asyncio import new_event_loop  # type: ignore[assignment]  # (uvloop's returns a Loop)
    EVENT_LOOP = "asyncio"

# Directions: "upstream" delays what the upstream sends back (the proxy in front of the
# server); "downstream" delays what the client sends to the upstream (the proxy in front
# of PostgreSQL, whose client is the server).
DIRECTIONS = ("upstream", "downstream", "both")
_CLOSE = None  # marker in a delayed queue: pass the close on


class DelayedWriter:
    """Writes chunks to a transport `delay_s` after they arrived, order kept.

    One timer per direction at a time (the head of the queue), so chunks can never
    overtake each other, whatever the event loop does with equal deadlines.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float,
                 on_close: Callable[[], None], not_before: float = 0.0) -> None:
        self.loop = loop
        self.delay_s = delay_s
        self.on_close = on_close
        #: Loop time before which nothing is released (the emulated handshake, see above).
        self.not_before = not_before
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.pending: list[bytes | None] = []  # arrived before the transport was connected
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        for item in self.pending:
            self.push(item)
        self.pending.clear()

    def push(self, data: bytes | None) -> None:
        if self.transport is None:
            self.pending.append(data)
            return
        now = self.loop.time()
        due = max(now + self.delay_s, self.not_before)
        if due <= now and not self.queue:
            self._emit(data)
            return
        self.queue.append((due, data))
        if self._timer is None:
            self._timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            self._emit(self.queue.popleft()[1])
        if self.queue:
            self._timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _emit(self, data: bytes | None) -> None:
        transport = self.transport
        alive = transport is not None and not transport.is_closing()
        if data is _CLOSE:
            if alive and transport is not None and transport.can_write_eof():
                with contextlib.suppress(OSError):  # the peer is already gone
                    transport.write_eof()
            self.on_close()
        elif alive and transport is not None:
            transport.write(data)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.queue.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes to `out`."""

    def __init__(self, conn: ProxiedConnection, out: DelayedWriter) -> None:
        self.conn = conn
        self.out = out
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not an asyncio.Transport instance under uvloop (its own class).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        # uvloop reports a FIN again when reading resumes after it (back-pressure paused
        # it): a second close marker closed the connection with data still queued.
        if not self.eof:
            self.eof = True
            self.out.push(_CLOSE)
        return True  # keep the other half open until the delayed FIN is passed on

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.eof:
            self.eof = True
            self.out.push(_CLOSE)
        self.conn.side_lost()

    # Back-pressure: a peer that cannot keep up stops us reading from the other side.
    def pause_writing(self) -> None:
        self.conn.pause_other(self)

    def resume_writing(self) -> None:
        self.conn.resume_other(self)


class ProxiedConnection:
    def __init__(self, loop: asyncio.AbstractEventLoop, upstream: tuple[str, int],
                 to_client_delay_s: float, to_upstream_delay_s: float) -> None:
        self.loop = loop
        self.upstream = upstream
        # Accepted now: the client's first message may not reach the upstream before the
        # handshake netem would have delayed (module docstring).
        handshake_done = loop.time() + 2 * to_upstream_delay_s + to_client_delay_s
        self.to_client = DelayedWriter(loop, to_client_delay_s, self._half_closed)
        self.to_upstream = DelayedWriter(loop, to_upstream_delay_s, self._half_closed,
                                         not_before=handshake_done)
        self.client = _Side(self, self.to_upstream)
        self.server = _Side(self, self.to_client)
        self._halves_closed = 0
        self._closed = False

    def client_protocol(self) -> _Side:
        return self.client

    async def connect_upstream(self) -> None:
        try:
            transport, _ = await self.loop.create_connection(lambda: self.server, *self.upstream)
        except OSError:
            self.close()  # the client sees its connection closed, as with a refused port
            return
        self.to_upstream.attach(cast(asyncio.Transport, transport))
        if self.client.transport is not None:
            self.to_client.attach(self.client.transport)

    def _half_closed(self) -> None:
        self._halves_closed += 1
        if self._halves_closed >= 2:
            self.close()

    def side_lost(self) -> None:
        if self.client.lost and self.server.lost:
            self.close()  # both sockets gone: drop whatever is still queued

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.close()
        self.to_client.cancel()
        self.to_upstream.cancel()

    def pause_other(self, side: _Side) -> None:
        other = self.server if side is self.client else self.client
        if other.transport is not None:
            other.transport.pause_reading()

    def resume_other(self, side: _Side) -> None:
        other = self.server if side is self.client else self.client
        if other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()


def delays(delay_ms: float, direction: str) -> tuple[float, float]:
    """(to-client delay, to-upstream delay) in seconds for a direction."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    delay_s = delay_ms / 1000
    return (delay_s if direction in ("upstream", "both") else 0.0,
            delay_s if direction in ("downstream", "both") else 0.0)


async def serve(listen: tuple[str, int], upstream: tuple[str, int], delay_ms: float,
                direction: str, ready: Callable[[str, int], None] | None = None) -> None:
    """Run the proxy until cancelled."""
    loop = asyncio.get_running_loop()
    to_client_s, to_upstream_s = delays(delay_ms, direction)
    tasks: set[asyncio.Task[None]] = set()

    def accept() -> asyncio.Protocol:
        conn = ProxiedConnection(loop, upstream, to_client_s, to_upstream_s)
        task = loop.create_task(conn.connect_upstream())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return conn.client_protocol()

    server = await loop.create_server(accept, *listen, backlog=4096, reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    if ready:
        ready(host, port)
    async with server:
        await server.serve_forever()


def set_realtime(priority: int) -> str:
    """SCHED_FIFO at `priority` (1-99) for this process; 0 leaves the scheduler alone.

    Returns the policy in force: "fifo", or "other" where it was 0 or not permitted."""
    if priority > 0:
        with contextlib.suppress(PermissionError, AttributeError):  # AttributeError: no Linux
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    with contextlib.suppress(AttributeError):
        if os.sched_getscheduler(0) == os.SCHED_FIFO:
            return "fifo"
    return "other"


def _priority(text: str) -> int:
    if not text.isdigit() or int(text) > 99:
        raise argparse.ArgumentTypeError(f"expected 0 (off) or a priority 1-99, got {text!r}")
    return int(text)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency.delay_proxy",
        description="A TCP proxy that releases each chunk L ms after it arrived, order kept.")
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT (port 0: any)")
    parser.add_argument("--upstream", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=_delay, required=True, help="added delay L in ms")
    parser.add_argument("--delay-direction", choices=DIRECTIONS, default="upstream",
                        help="upstream: delay what the upstream sends back (default); "
                             "downstream: delay what clients send to it; both")
    parser.add_argument("--realtime-priority", type=_priority, default=0, metavar="N",
                        help="run as a real-time task (SCHED_FIFO) at priority N, 1-99, where "
                             "permitted, so messages never wait for a busy core; 0: the "
                             "normal scheduler (default)")
    args = parser.parse_args(argv)
    sched = set_realtime(args.realtime_priority)

    def ready(host: str, port: int) -> None:
        print(f"listening {host}:{port} loop={EVENT_LOOP} sched={sched}", flush=True)

    loop = new_event_loop()

    main_task = loop.create_task(serve(args.listen, args.upstream, args.delay_ms,
                                       args.delay_direction, ready))
    # The proxy holds nothing worth a graceful close: on SIGTERM it exits at once, and the
    # kernel closes every socket (a graceful close of hundreds of half-open connections
    # took seconds and stretched each cell's teardown).
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, os._exit, 0)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}",
              file=sys.stderr)
        return 2
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
