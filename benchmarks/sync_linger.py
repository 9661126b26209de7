"""What Gunicorn's graceful close costs a sync worker when its clients are L ms away.

    python benchmarks/sync_linger.py [--latencies 0,100,200] [--clients 50] [--seconds 10]
                                     [--work-ms 25]

Since Gunicorn merged "drain connection on close per RFC 9112 section 9.6" (PR #3590,
2026-04-19; this project runs 27.0.1), a sync worker ends every connection with
shutdown(SHUT_WR), then reads until the client closes its side (at most 2 s), then
close(). The client's FIN comes back one round trip after the server's: the worker, which
serves one connection at a time, waits that round trip on every request. Netem on the
server's egress delays its FIN by L exactly as the latency proxy does, so both backends
show it; so would a real network. The study's Gunicorn closed at once.

Here: one Gunicorn sync worker serving a WSGI app that burns --work-ms of CPU per
request, behind the harness's latency proxy (bench/latency/delay_proxy.py, delaying what
the server sends by L), and --clients clients that each open a connection per request (a
sync worker closes every connection). Each latency runs twice: with Gunicorn's own close,
and with a config module that puts a plain close() back. Prints requests per second of
both, and 1 / (work + L), the rate of a worker that waits L per request.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

APP = '''import time


def app(environ, start_response):
    t0 = time.thread_time()
    while time.thread_time() - t0 < {work_s}:
        pass
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''

# A Gunicorn config module (-c python:plain_close): the worker closes as Gunicorn did
# before PR #3590. sync.py calls util.close_graceful through the module, so this reaches it.
PLAIN_CLOSE = '''import gunicorn.util


def _close(sock, *args, **kwargs):
    try:
        sock.close()
    except OSError:
        pass


gunicorn.util.close_graceful = _close
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _load(port: int, clients: int, seconds: float) -> float:
    """Requests per second of `clients` clients, each opening a connection per request;
    only requests that ended within `seconds` count (the ones still queued then do not)."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        while time.monotonic() < stop:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    sock.sendall(request)
                    while sock.recv(4096):
                        pass
            except OSError:
                continue
            if time.monotonic() <= stop:
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(max(stop - time.monotonic(), 0.0))
    # Clients still waiting for a response are daemon threads: stopping the server and
    # the proxy ends their connections.
    return sum(done) / seconds


def measure(folder: Path, latency_ms: int, plain: bool, clients: int, seconds: float) -> float:
    server_port = _free_port()
    procs: list[subprocess.Popen[str]] = []
    command = [sys.executable, "-m", "gunicorn", "app:app", "--workers", "1",
               "--bind", f"127.0.0.1:{server_port}", "--backlog", "2048",
               *(["-c", "python:plain_close"] if plain else [])]
    try:
        procs.append(subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, text=True))
        _wait_port(server_port)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "bench.latency.delay_proxy", "--listen", "127.0.0.1:0",
             "--upstream", f"127.0.0.1:{server_port}", "--delay-ms", str(latency_ms)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        procs.append(proxy)
        line = proxy.stdout.readline() if proxy.stdout else ""
        if not line.startswith("listening "):
            raise RuntimeError(f"the latency proxy did not start: {line!r}")
        proxy_port = int(line.split()[1].rpartition(":")[2])
        return _load(proxy_port, clients, seconds)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _latencies(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ms like 0,100,200, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected ms >= 0, got {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", type=_latencies, default=[0, 100, 200],
                        help="latencies in ms, comma-separated (0,100,200)")
    parser.add_argument("--clients", type=int, default=50, help="clients (50)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per measure (10)")
    parser.add_argument("--work-ms", type=float, default=25.0,
                        help="CPU per request, ms (25)")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.work_ms < 0:
        parser.error("--clients must be >= 1, --seconds > 0 and --work-ms >= 0")
    with tempfile.TemporaryDirectory(prefix="sync-linger-") as tmp:
        folder = Path(tmp)
        (folder / "app.py").write_text(APP.format(work_s=args.work_ms / 1000))
        (folder / "plain_close.py").write_text(PLAIN_CLOSE)
        print(f"{'L ms':>5} {'graceful close':>15} {'plain close':>12} {'ratio':>6} "
              f"{'1/(work+L)':>11}   (requests/s, {args.clients} clients, "
              f"{args.work_ms:g} ms of CPU each)")
        for latency in args.latencies:
            graceful = measure(folder, latency, False, args.clients, args.seconds)
            plain = measure(folder, latency, True, args.clients, args.seconds)
            bound = 1000 / (args.work_ms + latency) if args.work_ms + latency else float("inf")
            print(f"{latency:>5} {graceful:>15.1f} {plain:>12.1f} "
                  f"{graceful / plain if plain else float('nan'):>6.2f} {bound:>11.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
