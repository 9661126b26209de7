"""The latency proxy's own cost. Targets (issue 3): added round-trip time at L = 0 under
0.5 ms (median); at L = 100 the measured added delay within 5% of L; and how many chunks
per second it forwards on one core. Target (issue 10): on a real cell at L = 0, steady
sRPS through the proxy within 5% of the same cell without it.

    python benchmarks/proxy_overhead.py [--round-trips N] [--connections C] [--seconds S]
    python benchmarks/proxy_overhead.py --postgres [--connections-pg N]
    python benchmarks/proxy_overhead.py --end-to-end [--repeats N] [--variant V] [--route R]
        [--relay ours|python]
    python benchmarks/proxy_overhead.py --requests [--count N] [--variant V] [--route R]
        [--relay ours|python|haproxy]

An echo server on loopback answers each message at once. Round trips are timed direct
and through the proxy (bench/latency/proxy.py, a process of its own, as in a run); the
difference is the proxy's cost. Throughput: C connections ping-pong as fast as they can
through the proxy pinned to one core, with the clients and the echo server on the other.

--postgres: what a cell that opens a PostgreSQL connection per request pays (a new
connection is about ten messages, each crossing the proxy, plus its accept and connect).
Open a connection, run one query, close it: direct and through the proxy at 0 ms, one
after the other, N times (alternating, so drift hits both alike), with PostgreSQL and the
proxy on one core and this client on the other, as in a run; then the same with a busy
loop beside PostgreSQL on its core, standing in for Locust.

--end-to-end: the cost where it matters. One cell (default sync_gunicorn io_create/ at
0 ms, which opens a PostgreSQL connection per request) through `python -m bench run`,
with `--latency-backend proxy` and `--latency-backend none`, interleaved (the order flips
every repeat, so a drift of the machine does not favour one side), `--profile quick`.
A run leaves the proxies out at 0 ms (bench/latency/proxy.py says why); here they are
kept in (BENCH_PROXY_AT_ZERO=1), since their hop is what this measures.
Prints each repeat's steady sRPS and the ratio proxy / none, and whether the two are within
5% (the 95% interval of the ratio inside 0.95..1.05), apart, or too noisy to tell; then
the same at one machine speed (each cell moved to the cells' mean probe along their slope
of throughput on it, as the report's calibration line compares repeats).

--requests: the same hop, request by request, so the machine's drift cancels out. Two
servers of the variant on the server's core, placed as in a run (bench/runner.py
placement): one reaches PostgreSQL and is called directly; the other reaches it through a
downstream proxy and is called through an upstream proxy (both at 0 ms, real-time, on the
server's core, as ProxySession starts them). This client, on the other core, alternates
one request to each (a new connection each, order flipped every pair), N pairs. Prints
each path's median time per request, the ratio of medians with a paired bootstrap 95%
interval (scipy), and the proxies' CPU per request (/proc/PID/task/*/schedstat). A server
that serves one request at a time (sync_gunicorn) loses about that share of its throughput.
The --end-to-end cells' ratios scatter by 0.82-1.02 with the machine's speed; these pairs
are milliseconds apart.

--relay: which program relays. `ours` (the default): what a run starts, the C relay
(bench/latency/delay_relay.c) where this machine compiles it, else the Python proxy;
`python`: the Python proxy (bench/latency/delay_proxy.py) whatever the compiler.

--requests --relay haproxy: the same pairs with HAProxy (`apt-get install haproxy`) as the
relay instead of ours: one HAProxy process per hop (mode tcp, one thread), placed and
scheduled as ours (the server's core, SCHED_FIFO where permitted). HAProxy is a
well-tuned relay in C with no delay to apply: about the least a relay that runs as a
process costs here, which tells our proxy's own share of the hop from the hop's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.latency.proxy import AT_ZERO_ENV, ProxyProcess
from bench.latency.relay import RELAY_ENV, choose
from bench.processes import run_to_end
from bench.report.data import CellRecord, load_run
from bench.report.stats import pooled_slope

RTT_TARGET_MS = 0.5
ACCURACY_TARGET = 0.05
END_TO_END_TARGET = 0.05  # steady sRPS through the proxy within 5% of none


def echo_server() -> int:
    """A threaded echo server; returns its port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)

    def echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return int(sock.getsockname()[1])


def round_trips_ms(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(20):  # warm up
            conn.sendall(b"x" * 64)
            conn.recv(64)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            conn.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(conn.recv(64 - got))
            times.append((time.perf_counter() - t0) * 1000)
    return times


async def _pingpong(port: int, connections: int, seconds: float) -> int:
    done = 0
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            writer.write(b"y" * 64)
            await reader.readexactly(64)
            done += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return done


def throughput(port: int, proxy_pid: int, connections: int, seconds: float) -> dict[str, float]:
    proc = psutil.Process(proxy_pid)
    proc.cpu_percent(None)
    t0 = time.monotonic()
    trips = asyncio.run(_pingpong(port, connections, seconds))
    elapsed = time.monotonic() - t0
    cpu = proc.cpu_percent(None)
    # Each round trip is two chunks through the proxy (request and echo).
    return {"round_trips_per_s": round(trips / elapsed), "chunks_per_s": round(2 * trips / elapsed),
            "proxy_cpu_pct": round(cpu, 1)}


def _connect_ms(port: int, env: dict[str, str]) -> float:
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(host=env["DB_HOST"], port=port, dbname=env["DB_NAME"],
                         user=env["DB_USER"], password=env["DB_PASSWORD"],
                         autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()
    return (time.perf_counter() - t0) * 1000


def postgres_connections(count: int, proxy_cpus: list[int]) -> int:
    from bench.postgres import PostgresCluster

    with PostgresCluster() as cluster:
        cluster.start()
        assert cluster.postmaster_pid is not None and cluster.port is not None
        psutil.Process(cluster.postmaster_pid).cpu_affinity(proxy_cpus)  # backends inherit it
        env = cluster.app_env("postgres")
        proxy = ProxyProcess((cluster.host, cluster.port), 0, "downstream", cpus=proxy_cpus)
        _, proxy_port = proxy.start()
        busy: subprocess.Popen[bytes] | None = None
        try:
            for contended in (False, True):
                if contended:
                    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    psutil.Process(busy.pid).cpu_affinity(proxy_cpus)
                times: dict[str, list[float]] = {"direct": [], "proxy": []}
                for _ in range(count):
                    times["direct"].append(_connect_ms(cluster.port, env))
                    times["proxy"].append(_connect_ms(proxy_port, env))
                direct, proxied = (statistics.median(times[k]) for k in ("direct", "proxy"))
                print(f"PostgreSQL connect + query + close, {count} each, "
                      f"{'a busy loop beside PostgreSQL' if contended else 'no busy loop'}: "
                      f"direct {direct:.2f} ms, through the proxy ({proxy.event_loop}) "
                      f"{proxied:.2f} ms median: {proxied - direct:+.2f} ms "
                      f"({proxied / direct - 1:+.1%})", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
            proxy.stop()
    return 0


def run_cell(backend: str, variant: str, route: str, profile: str, out: Path) -> CellRecord:
    """One `bench run` cell at 0 ms with this latency backend (the proxy's hop kept in the
    path), ok and with its steady sRPS."""
    command = [sys.executable, "-m", "bench", "run", "--variants", variant, "--routes", route,
               "--latencies", "0", "--profile", profile, "--latency-backend", backend,
               "--out", str(out), "--no-report"]
    env = {**os.environ, AT_ZERO_ENV: "1"}
    # Ctrl-C: the run stops its servers and PostgreSQL before this exits.
    done = run_to_end(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    cells = sorted(out.glob("cells/*/cell.json"))
    if not cells:
        raise SystemExit(f"{' '.join(command)} wrote no cell.json (exit {done.returncode}):\n"
                         f"{(done.stderr or done.stdout)[-800:]}")
    (cell,) = load_run(out).cells
    if cell.status != "ok" or cell.metric("steady_srps") is None:
        raise SystemExit(f"{cells[0]}: status {cell.status}, reason {cell.reason}")
    return cell


def at_one_speed(cells: list[CellRecord]) -> list[float] | None:
    """Each cell's steady sRPS moved to the cells' mean machine speed along their pooled
    slope of throughput on it (corrected for the probe's noise: bench/report/stats.py
    pooled_slope); None without a probe or a slope."""
    probes = [cell.metric("machine_probe_ms") for cell in cells]
    slope = pooled_slope(cells)
    if slope is None or any(p is None for p in probes):
        return None
    reference = statistics.mean(p for p in probes if p is not None)
    return [float(cell.metric("steady_srps") or 0.0) - slope[0] * (float(p or 0.0) - reference)
            for cell, p in zip(cells, probes, strict=True)]


def verdict_of(low: float, high: float) -> str:
    band = (1 - END_TO_END_TARGET, 1 + END_TO_END_TARGET)
    if band[0] <= low and high <= band[1]:
        return f"within {END_TO_END_TARGET:.0%}"
    if high < band[0] or low > band[1]:
        return f"apart by more than {END_TO_END_TARGET:.0%}"
    return "cannot tell at this noise: more repeats, or a quieter machine"


def end_to_end(repeats: int, variant: str, route: str, profile: str) -> int:
    srps: dict[str, list[float]] = {"proxy": [], "none": []}
    cells: dict[str, list[CellRecord]] = {"proxy": [], "none": []}
    with tempfile.TemporaryDirectory(prefix="proxy-e2e-") as tmp:
        for repeat in range(repeats):
            order = ("proxy", "none") if repeat % 2 == 0 else ("none", "proxy")
            for backend in order:
                cell = run_cell(backend, variant, route, profile,
                                Path(tmp) / f"r{repeat + 1}-{backend}")
                cells[backend].append(cell)
                srps[backend].append(float(cell.metric("steady_srps") or 0.0))
            ratio = srps["proxy"][-1] / srps["none"][-1]
            probes = [c[-1].metric("machine_probe_ms") for c in (cells["proxy"], cells["none"])]
            print(f"repeat {repeat + 1} ({order[0]} first): proxy {srps['proxy'][-1]:.1f}, "
                  f"none {srps['none'][-1]:.1f} steady sRPS, ratio {ratio:.3f} "
                  f"(machine probe {probes[0]} vs {probes[1]} ms)", flush=True)
    ratios = [p / n for p, n in zip(srps["proxy"], srps["none"], strict=True)]
    overall = statistics.mean(srps["proxy"]) / statistics.mean(srps["none"])
    low, high = ratio_interval(ratios)
    verdict = verdict_of(low, high)
    # The machine's speed moves between cells (a run's cells differ by up to 28% at one
    # setting, bench/report/stats.py): compared at one speed, the same pairs.
    adjusted = at_one_speed(cells["proxy"] + cells["none"])
    speed: dict[str, Any] = {}
    if adjusted is not None:
        speed_ratios = [p / n for p, n in zip(adjusted[:repeats], adjusted[repeats:],
                                              strict=True)]
        speed_low, speed_high = ratio_interval(speed_ratios)
        speed = {"ratios": [round(r, 4) for r in speed_ratios],
                 "ratio_interval95": [round(speed_low, 4), round(speed_high, 4)],
                 "verdict": verdict_of(speed_low, speed_high)}
    print(f"{variant} {route}/ 0 ms, profile {profile}, {repeats} repeats: "
          f"proxy {statistics.mean(srps['proxy']):.1f}, none {statistics.mean(srps['none']):.1f} "
          f"steady sRPS (means); ratio of means {overall:.3f}; per-repeat ratios "
          f"{min(ratios):.3f}..{max(ratios):.3f}, their geometric mean's 95% interval "
          f"{low:.3f}..{high:.3f}: {verdict}")
    print(json.dumps({"variant": variant, "route": route, "profile": profile,
                      "proxy_srps": srps["proxy"], "none_srps": srps["none"],
                      "ratios": [round(r, 4) for r in ratios],
                      "ratio_of_means": round(overall, 4),
                      "ratio_interval95": [round(low, 4), round(high, 4)], "verdict": verdict,
                      "at_one_speed": speed or None}))
    if speed:
        print(f"at one machine speed (each cell moved to the cells' mean probe along their "
              f"pooled slope, corrected for the probe's noise): per-repeat ratios "
              f"{min(speed['ratios']):.3f}..{max(speed['ratios']):.3f}, their geometric "
              f"mean's 95% interval {speed_low:.3f}..{speed_high:.3f}: {speed['verdict']}")
    return 1 if verdict.startswith("apart") else 0


def _one_request(port: int, method: str, path: str, body: bytes | None) -> float:
    """Milliseconds for one request on a new connection (the answer must be 2xx)."""
    import http.client

    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise SystemExit(f"{method} {path} on port {port} answered {response.status}")
    return (time.perf_counter() - t0) * 1000


def _cpu_ms(pids: list[int]) -> float:
    """CPU time used so far by these processes' threads, in ms (schedstat: nanoseconds)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with open(stat) as handle:
                total += int(handle.read().split()[0])
    return total / 1e6


ROUTE_REQUESTS = {  # what the locustfile sends (load/locustfile.py), one fixed body
    "io_create": ("POST", "/io_create/", b"title=hello+world&content=" + b"x" * 200),
    "io_read": ("GET", "/io_read/", None),
}


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 10s
    timeout client 120s
    timeout server 120s
listen hop
    bind 127.0.0.1:{port}
    server upstream {host}:{upstream_port}
"""


class HaproxySession:
    """One HAProxy per hop, in place of ProxySession's two proxies at 0 ms (--relay
    haproxy): the same endpoints, placement and scheduling."""

    def __init__(self, cpus: list[int], folder: Path) -> None:
        import shutil

        binary = shutil.which("haproxy")
        if binary is None:
            raise SystemExit("--relay haproxy: no haproxy on PATH (apt-get install haproxy)")
        self.binary = binary
        self.cpus, self.folder = cpus, folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sched: list[str] = []

    def _start(self, host: str, upstream_port: int) -> tuple[str, int]:
        from bench.latency.proxy import READY_TIMEOUT_S, REALTIME_PRIORITY, realtime_permitted
        from bench.net import free_port, is_listening
        from bench.processes import child_setup

        port = free_port("127.0.0.1")
        config = self.folder / f"haproxy-{port}.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=port, host=host,
                                                upstream_port=upstream_port))
        proc = subprocess.Popen([self.binary, "-db", "-f", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=child_setup(self.cpus))
        self.procs.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_listening("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"haproxy did not listen on 127.0.0.1:{port} ({config})")
            time.sleep(0.05)  # poll interval of the readiness check
        policy = "other"
        if realtime_permitted():
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                os.sched_setscheduler(int(task.name), os.SCHED_FIFO,
                                      os.sched_param(REALTIME_PRIORITY))
            policy = "fifo"
        self.sched.append(policy)
        return "127.0.0.1", port

    def db_endpoint(self, pg_host: str, pg_port: int) -> tuple[str, int]:
        return self._start(pg_host, pg_port)

    def client_endpoint(self, server_port: int) -> tuple[str, int]:
        return self._start("127.0.0.1", server_port)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def schedulings(self) -> list[str]:
        return list(self.sched)

    def close(self) -> None:
        from bench.latency.proxy import STOP_GRACE_S
        from bench.processes import stop_process

        for proc in self.procs:
            stop_process(proc, STOP_GRACE_S)
        self.procs.clear()


def per_request(count: int, variant_name: str, route: str, rows: int, relay: str = "ours"
                ) -> int:
    from bench.latency.proxy import ProxySession
    from bench.net import free_port
    from bench.postgres import PostgresCluster
    from bench.runner import placement
    from bench.server import ServerProcess, app_environment
    from bench.variants import discover

    variants = discover()
    if variant_name not in variants:
        raise SystemExit(f"--variant: no variant {variant_name!r} (have: "
                         f"{', '.join(sorted(variants))})")
    variant = variants[variant_name]
    if variant.pgbouncer is not None:
        raise SystemExit(f"--requests: {variant_name} reaches PostgreSQL through PgBouncer; "
                         f"pick a variant without [pgbouncer]")
    method, path, body = ROUTE_REQUESTS[route]
    place = placement()
    os.sched_setaffinity(0, place["other_cpus"])
    os.environ[AT_ZERO_ENV] = "1"  # the proxies stay in at 0 ms: their hop is measured
    servers: list[ServerProcess] = []
    with PostgresCluster() as cluster, tempfile.TemporaryDirectory(prefix="proxy-rq-") as tmp:
        session: ProxySession | HaproxySession = (
            HaproxySession(place["latency_cpus"], Path(tmp)) if relay == "haproxy"
            else ProxySession(0, cpus=place["latency_cpus"]))
        cluster.start()
        assert cluster.postmaster_pid is not None and cluster.port is not None
        psutil.Process(cluster.postmaster_pid).cpu_affinity(place["other_cpus"])
        cluster.ensure_template(rows)
        db = cluster.clone_database(f"proxy_rq_{os.getpid()}")
        try:
            ports: dict[str, int] = {}
            for name in ("direct", "proxy"):
                endpoint = (session.db_endpoint(cluster.host, cluster.port) if name == "proxy"
                            else (cluster.host, cluster.port))
                port = free_port("127.0.0.1")
                env = app_environment(variant, cluster.app_env(db, *endpoint), ["127.0.0.1"],
                                      1000)
                server = ServerProcess(variant.server_command("127.0.0.1", port), env,
                                       Path(tmp) / f"{name}.log", cpu_affinity=place["server_cpus"])
                servers.append(server)
                server.start()
                server.wait_listening("127.0.0.1", port)
                ports[name] = port if name == "direct" else session.client_endpoint(port)[1]
            for _ in range(20):  # warm up both paths (imports, first connections)
                for port in ports.values():
                    _one_request(port, method, path, body)
            times: dict[str, list[float]] = {"direct": [], "proxy": []}
            cpu_before = _cpu_ms(session.pids())
            for pair in range(count):
                for name in (("direct", "proxy") if pair % 2 == 0 else ("proxy", "direct")):
                    times[name].append(_one_request(ports[name], method, path, body))
            proxy_cpu = (_cpu_ms(session.pids()) - cpu_before) / count
            schedulings = session.schedulings()
        finally:
            for server in servers:
                server.stop()
            session.close()
            cluster.drop_database(db)
    return _report_requests(times, proxy_cpu, schedulings, variant_name, route, relay)


def _report_requests(times: dict[str, list[float]], proxy_cpu_ms: float, schedulings: list[str],
                     variant: str, route: str, relay: str = "ours") -> int:
    import numpy as np
    from scipy import stats

    direct, proxied = (np.array(times[k]) for k in ("direct", "proxy"))
    ratio = float(np.median(proxied) / np.median(direct))
    interval = stats.bootstrap((direct, proxied), lambda d, p: np.median(p) / np.median(d),
                               paired=True, vectorized=False, n_resamples=2000,
                               random_state=1).confidence_interval
    low, high = float(interval.low), float(interval.high)
    target = 1 + END_TO_END_TARGET
    verdict = (f"within {END_TO_END_TARGET:.0%}" if high <= target else
               f"apart by more than {END_TO_END_TARGET:.0%}" if low > target else
               "cannot tell at this noise: more pairs")
    program = relay if relay == "haproxy" else choose().name
    through = ("HAProxy" if program == "haproxy" else
               f"the proxies ({'C relay' if program == 'c' else 'Python proxy'})")
    print(f"{variant} {route}/ at 0 ms, {len(direct)} pairs: direct {np.median(direct):.2f} ms, "
          f"through {through} "
          f"({'/'.join(schedulings)}) {np.median(proxied):.2f} ms a request "
          f"(medians): ratio {ratio:.3f} (95% {low:.3f}..{high:.3f}), "
          f"+{np.median(proxied) - np.median(direct):.2f} ms; the proxies used "
          f"{proxy_cpu_ms:.2f} ms of CPU a request: {verdict}")
    print(json.dumps({"variant": variant, "route": route, "relay": program, "pairs": len(direct),
                      "direct_median_ms": round(float(np.median(direct)), 3),
                      "proxy_median_ms": round(float(np.median(proxied)), 3),
                      "ratio": round(ratio, 4), "ratio_interval95": [round(low, 4), round(high, 4)],
                      "proxy_cpu_ms_per_request": round(proxy_cpu_ms, 3), "verdict": verdict}))
    return 1 if verdict.startswith("apart") else 0


def ratio_interval(ratios: list[float]) -> tuple[float, float]:
    """95% interval of the geometric mean of paired ratios (Student-t on their logs, scipy's
    one-sample t-test); (0, inf) with fewer than two."""
    if len(ratios) < 2:
        return 0.0, math.inf
    from scipy import stats

    interval = stats.ttest_1samp([math.log(r) for r in ratios], 0.0).confidence_interval(0.95)
    return math.exp(interval.low), math.exp(interval.high)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--postgres", action="store_true",
                        help="time new PostgreSQL connections direct and through the proxy")
    parser.add_argument("--connections-pg", type=int, default=200, help="with --postgres")
    parser.add_argument("--end-to-end", action="store_true",
                        help="compare one bench run cell through the proxy and without it")
    parser.add_argument("--repeats", type=int, default=3, help="with --end-to-end")
    parser.add_argument("--requests", action="store_true",
                        help="time requests direct and through the proxies, alternating")
    parser.add_argument("--count", type=_positive, default=300,
                        help="with --requests: pairs of requests (default 300)")
    parser.add_argument("--rows", type=_positive, default=1_000_000,
                        help="with --requests: posts in the database (a run's default)")
    parser.add_argument("--variant", default="sync_gunicorn",
                        help="with --end-to-end or --requests")
    parser.add_argument("--route", default="io_create", help="with --end-to-end or --requests "
                        f"(--requests: {', '.join(ROUTE_REQUESTS)})")
    parser.add_argument("--profile", default="quick", help="with --end-to-end")
    parser.add_argument("--relay", choices=("ours", "python", "haproxy"), default="ours",
                        help="with --requests or --end-to-end: the relay of the proxied path: "
                             "ours (the C relay where it builds, as a run), python (the "
                             "Python proxy), haproxy (--requests only)")
    args = parser.parse_args()
    if args.relay != "ours" and not (args.requests or args.end_to_end):
        parser.error("--relay goes with --requests or --end-to-end")
    if args.relay == "haproxy" and not args.requests:
        parser.error("--relay haproxy goes with --requests")
    if args.relay == "python":
        os.environ[RELAY_ENV] = "python"  # ProxySession's proxies, here and in bench run
    if args.requests:
        if args.route not in ROUTE_REQUESTS:
            parser.error(f"--requests times {', '.join(ROUTE_REQUESTS)}, not {args.route!r}")
        return per_request(args.count, args.variant, args.route, args.rows, args.relay)
    if args.end_to_end:
        return end_to_end(args.repeats, args.variant, args.route, args.profile)
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus, other_cpus = (cpus[-1:], cpus[:-1]) if len(cpus) > 1 else (cpus, cpus)
    os.sched_setaffinity(0, other_cpus)
    if args.postgres:
        return postgres_connections(args.connections_pg, proxy_cpus)
    port = echo_server()

    direct = round_trips_ms(port, args.round_trips)
    results: dict[str, object] = {"direct_rtt_median_ms": round(statistics.median(direct), 3)}
    for delay_ms in (0, 100):
        proxy = ProxyProcess(("127.0.0.1", port), delay_ms, "upstream", cpus=proxy_cpus)
        _, proxy_port = proxy.start()
        try:
            count = args.round_trips if delay_ms == 0 else max(20, args.round_trips // 10)
            proxied = round_trips_ms(proxy_port, count)
            added = statistics.median(proxied) - statistics.median(direct)
            results[f"L{delay_ms}_rtt_median_ms"] = round(statistics.median(proxied), 3)
            results[f"L{delay_ms}_rtt_p99_ms"] = round(statistics.quantiles(proxied, n=100)[98], 3)
            results[f"L{delay_ms}_added_ms"] = round(added, 3)
            if delay_ms == 0:
                assert proxy.pid is not None
                results.update({f"L0_{k}": v for k, v in throughput(
                    proxy_port, proxy.pid, args.connections, args.seconds).items()})
        finally:
            proxy.stop()
    added0 = float(results["L0_added_ms"])  # type: ignore[arg-type]
    added100 = float(results["L100_added_ms"])  # type: ignore[arg-type]
    error100 = abs(added100 - 100) / 100
    print(f"direct round trip: median {results['direct_rtt_median_ms']} ms")
    print(f"L = 0:   added {added0:.3f} ms median (target < {RTT_TARGET_MS} ms)")
    print(f"L = 100: added {added100:.2f} ms median, error {error100:.1%} "
          f"(target < {ACCURACY_TARGET:.0%})")
    print(f"one core: {results['L0_chunks_per_s']} chunks/s "
          f"({results['L0_round_trips_per_s']} round trips/s over {args.connections} "
          f"connections), proxy CPU {results['L0_proxy_cpu_pct']}%")
    print(json.dumps(results))
    return 0 if added0 < RTT_TARGET_MS and error100 < ACCURACY_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
