"""Latency backends: the proxy's delay, order and closing on real sockets; the commands
netem would run; backend choice and its refusal where the kernel lacks sch_netem."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.latency import LatencyError, open_latency, resolve_backend
from bench.latency import auto as latency_auto
from bench.latency.delay_proxy import EVENT_LOOP, DelayedWriter, delays
from bench.latency.netem import NETEM_LIMIT, NetemSession, Topology, netem_qdisc_command
from bench.latency.proxy import AT_ZERO_ENV, ProxyProcess, ProxySession, realtime_permitted
from bench.latency.relay import RELAY_ENV, RelayError, build, choose

ROOT = Path(__file__).resolve().parents[1]

# One xdist worker runs these in order with the other tests that make network namespaces
# (tests/test_run.py's Ctrl-C test compares `ip netns list` before and after); the ones
# that time milliseconds are marked `alone`: nox runs them after the others, with nothing
# beside them.
pytestmark = pytest.mark.xdist_group("runs")


class EchoServer:
    """A real TCP server on loopback that echoes each chunk back at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                self.received += data
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(params=["c", "python"])
def relay_name(request: pytest.FixtureRequest) -> str:
    """Each proxy test runs both programs: the C relay and the Python proxy."""
    if request.param == "c" and build()[0] is None:
        pytest.skip(f"the C relay cannot run here: {build()[1]}")
    return str(request.param)


def relay_command(relay_name: str) -> list[str]:
    """The command line that starts the proxy program `relay_name`, before its arguments."""
    return choose(relay_name).command


def round_trips_ms(host: str, port: int, count: int = 20) -> list[float]:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for i in range(count):
            payload = f"ping {i}\n".encode()
            t0 = time.perf_counter()
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += conn.recv(4096)
            times.append((time.perf_counter() - t0) * 1000)
            assert got == payload
        return times


@pytest.mark.alone
@pytest.mark.parametrize(("direction", "delay_ms"), [("upstream", 80), ("downstream", 80),
                                                     ("both", 40)])
def test_proxy_adds_its_delay_once_per_round_trip(echo: EchoServer, direction: str,
                                                  delay_ms: int, relay_name: str) -> None:
    proxy = ProxyProcess(("127.0.0.1", echo.port), delay_ms, direction, relay=relay_name)
    host, port = proxy.start()
    try:
        times = round_trips_ms(host, port)
    finally:
        proxy.stop()
    added = 80  # one way delayed by 80, or both ways by 40
    assert added <= statistics.median(times) < added * 1.10, times
    assert min(times) >= added * 0.98, times


@pytest.mark.alone
@pytest.mark.parametrize(("direction", "delay_ms"), [("upstream", 80), ("downstream", 80),
                                                     ("both", 40)])
def test_a_new_connection_pays_the_handshake_netem_would_delay(
        echo: EchoServer, direction: str, delay_ms: int, relay_name: str) -> None:
    """Under netem a connect() costs d_up + d_down and each round trip after it d_up +
    d_down (80 ms here, whatever the direction): the proxy cannot delay the handshake, so
    the first message is held instead, and connect + first round trip takes 160 ms."""
    proxy = ProxyProcess(("127.0.0.1", echo.port), delay_ms, direction, relay=relay_name)
    host, port = proxy.start()
    try:
        t0 = time.perf_counter()
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"first")
            assert conn.recv(16) == b"first"
            first_ms = (time.perf_counter() - t0) * 1000
            t1 = time.perf_counter()
            conn.sendall(b"second")
            assert conn.recv(16) == b"second"
            second_ms = (time.perf_counter() - t1) * 1000
    finally:
        proxy.stop()
    assert 160 * 0.98 <= first_ms < 160 * 1.15, first_ms
    assert 80 * 0.98 <= second_ms < 80 * 1.15, second_ms


def test_the_proxy_session_leaves_the_path_direct_at_zero(echo: EchoServer,
                                                          monkeypatch) -> None:
    """At 0 ms a run dials PostgreSQL and the server directly and starts no process;
    BENCH_PROXY_AT_ZERO=1 puts the proxies back (to measure their hop)."""
    monkeypatch.delenv(AT_ZERO_ENV, raising=False)
    with ProxySession(0) as session:
        assert session.db_endpoint("127.0.0.1", echo.port) == ("127.0.0.1", echo.port)
        assert session.client_endpoint(echo.port) == (session.server_bind_host, echo.port)
        assert session.pids() == [] and not session.proxied
    monkeypatch.setenv(AT_ZERO_ENV, "1")
    with ProxySession(0) as session:
        host, port = session.db_endpoint("127.0.0.1", echo.port)
        assert port != echo.port and len(session.pids()) == 1 and session.proxied
        assert statistics.median(round_trips_ms(host, port, 5)) < 5


@pytest.mark.alone
def test_proxy_at_zero_adds_under_a_millisecond(echo: EchoServer, relay_name: str) -> None:
    proxy = ProxyProcess(("127.0.0.1", echo.port), 0, "upstream", relay=relay_name)
    host, port = proxy.start()
    try:
        times = round_trips_ms(host, port, 50)
    finally:
        proxy.stop()
    assert statistics.median(times) < 1.0, times


def test_proxy_runs_on_uvloop_where_it_is_installed() -> None:
    """uvloop is a dependency: the proxy falls back to asyncio only where it cannot import it."""
    pytest.importorskip("uvloop")
    assert EVENT_LOOP == "uvloop"


def test_proxy_keeps_order_and_every_byte(echo: EchoServer, relay_name: str) -> None:
    proxy = ProxyProcess(("127.0.0.1", echo.port), 20, "both", relay=relay_name)
    host, port = proxy.start()
    sent = b"".join(f"{i:06d}".encode() for i in range(20000))  # 120 kB in many writes
    try:
        with socket.create_connection((host, port), timeout=10) as conn:
            for offset in range(0, len(sent), 997):
                conn.sendall(sent[offset:offset + 997])
            conn.shutdown(socket.SHUT_WR)  # the FIN is passed on, late, after the data
            got = bytearray()
            while data := conn.recv(65536):
                got += data
    finally:
        proxy.stop()
    assert bytes(got) == sent
    assert bytes(echo.received) == sent


def test_proxy_closes_the_client_when_the_upstream_refuses(relay_name: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    proxy = ProxyProcess(("127.0.0.1", dead_port), 10, "upstream", relay=relay_name)
    host, port = proxy.start()
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"hello")
            assert conn.recv(10) == b""  # closed, no answer
    finally:
        proxy.stop()


def test_proxy_passes_megabytes_both_ways_while_pausing_a_fast_sender(
        echo: EchoServer, relay_name: str) -> None:
    """20 MB each way through a delaying proxy: more than it holds for a side before it
    stops reading it (16 MiB in the C relay), so reading pauses and resumes."""
    proxy = ProxyProcess(("127.0.0.1", echo.port), 20, "both", relay=relay_name)
    host, port = proxy.start()
    block = bytes(range(256)) * 4096  # 1 MiB
    sent = block * 20
    got = bytearray()
    try:
        with socket.create_connection((host, port), timeout=30) as conn:
            def send() -> None:
                conn.sendall(sent)
                conn.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            while data := conn.recv(1 << 20):
                got += data
            sender.join(30)
    finally:
        proxy.stop()
    assert len(got) == len(sent) and bytes(got) == sent


def test_proxy_sleeps_while_a_closed_connection_waits_for_its_late_fin(
        relay_name: str) -> None:
    """A client whose half is over both ways (it sent its FIN, and the server's reached it)
    while its own FIN is still held for L: the proxy waits for the timer, it does not spin
    on the hang-up epoll reports for that socket meanwhile."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        proxy = ProxyProcess(("127.0.0.1", listener.getsockname()[1]), 400, "downstream",
                             relay=relay_name)
        host, port = proxy.start()
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                upstream, _ = listener.accept()
                upstream.sendall(b"hello")
                upstream.shutdown(socket.SHUT_WR)  # the server's FIN: passed on at once
                assert conn.recv(16) == b"hello" and conn.recv(16) == b""
                conn.shutdown(socket.SHUT_WR)  # held for 400 ms (and its handshake, 800)
                time.sleep(0.05)
                assert proxy.pid is not None
                before = psutil.Process(proxy.pid).cpu_times()
                time.sleep(0.5)
                after = psutil.Process(proxy.pid).cpu_times()
                upstream.settimeout(5)
                assert upstream.recv(16) == b""  # the late FIN arrives in the end
                upstream.close()
        finally:
            proxy.stop()
    used = (after.user + after.system) - (before.user + before.system)
    assert used < 0.1, f"{used:.3f} s of CPU in 0.5 s of waiting"


def test_the_relay_is_chosen_as_asked(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(RELAY_ENV, "python")
    assert choose().name == "python" and choose().binary is None
    monkeypatch.setenv(RELAY_ENV, "rust")
    with pytest.raises(RelayError, match="expected one of c, python"):
        choose()
    # No compiler: the Python proxy, and why; asking for the C one is an error that says so.
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    build.cache_clear()
    try:
        monkeypatch.delenv(RELAY_ENV)
        assert choose().name == "python" and "no C compiler" in choose().why
        monkeypatch.setenv(RELAY_ENV, "c")
        with pytest.raises(RelayError, match="no C compiler"):
            choose()
    finally:
        build.cache_clear()


def test_the_c_relay_is_built_once_into_the_cache(monkeypatch, tmp_path: Path) -> None:
    if build()[0] is None:
        pytest.skip(f"the C relay cannot run here: {build()[1]}")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    build.cache_clear()
    try:
        binary, why = build()
        assert binary is not None and binary.parent == tmp_path / "relay", why
        assert why.startswith("built with ") and os.access(binary, os.X_OK)
        built_at = binary.stat().st_mtime_ns
        build.cache_clear()
        assert build()[0] == binary and binary.stat().st_mtime_ns == built_at
        assert [p.name for p in binary.parent.iterdir()] == [binary.name]  # no partial file
    finally:
        build.cache_clear()


@pytest.mark.alone
def test_delayed_writer_releases_in_arrival_order() -> None:
    class Sink(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out: list[tuple[float, bytes]] = []
            self.eof = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.out.append((loop.time(), bytes(data)))

        def is_closing(self) -> bool:
            return False

        def can_write_eof(self) -> bool:
            return True

        def write_eof(self) -> None:
            self.eof = True

    async def scenario() -> tuple[Sink, list[float], bool]:
        closed: list[bool] = []
        writer = DelayedWriter(loop, 0.05, lambda: closed.append(True))
        sink = Sink()
        writer.attach(sink)
        starts = []
        for i in range(5):
            starts.append(loop.time())
            writer.push(f"chunk{i}".encode())
            await asyncio.sleep(0.01)
        writer.push(None)
        await asyncio.sleep(0.1)
        return sink, starts, bool(closed)

    loop = asyncio.new_event_loop()
    try:
        sink, starts, closed = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert [data for _, data in sink.out] == [f"chunk{i}".encode() for i in range(5)]
    for (at, _), start in zip(sink.out, starts, strict=True):
        assert at - start >= 0.05
    assert sink.eof and closed


@pytest.mark.alone
def test_delayed_writer_holds_everything_until_not_before() -> None:
    """The emulated handshake: with no delay of its own, a writer whose `not_before` lies
    ahead releases nothing before it, then everything at once, in order; later chunks go
    straight through."""
    out: list[tuple[float, bytes]] = []

    class Sink(asyncio.Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            out.append((loop.time(), bytes(data)))

        def is_closing(self) -> bool:
            return False

    async def scenario() -> float:
        not_before = loop.time() + 0.06
        writer = DelayedWriter(loop, 0.0, lambda: None, not_before=not_before)
        writer.attach(Sink())
        writer.push(b"a")
        await asyncio.sleep(0.02)
        writer.push(b"b")
        await asyncio.sleep(0.08)
        writer.push(b"c")
        return not_before

    loop = asyncio.new_event_loop()
    try:
        not_before = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert [data for _, data in out] == [b"a", b"b", b"c"]
    assert all(at >= not_before for at, _ in out)
    assert out[2][0] - out[1][0] >= 0.015  # "c" was written when it came, not queued


def test_delays_by_direction() -> None:
    assert delays(100, "upstream") == (0.1, 0.0)
    assert delays(100, "downstream") == (0.0, 0.1)
    assert delays(100, "both") == (0.1, 0.1)
    with pytest.raises(ValueError, match="direction"):
        delays(100, "sideways")


def test_proxy_cli_rejects_bad_arguments(relay_name: str) -> None:
    result = subprocess.run([*relay_command(relay_name), "--listen", "nohost",
                             "--upstream", "127.0.0.1:1", "--delay-ms", "5"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_proxy_cli_rejects_a_bad_realtime_priority(relay_name: str) -> None:
    result = subprocess.run([*relay_command(relay_name), "--listen", "127.0.0.1:0",
                             "--upstream", "127.0.0.1:1",
                             "--delay-ms", "0", "--realtime-priority", "100"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "priority 1-99" in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--delay-ms", "-1"], "milliseconds >= 0"),
    (["--delay-ms", "5ms"], "milliseconds >= 0"),
    (["--delay-ms", "5", "--delay-direction", "sideways"], "sideways"),
    (["--delay-ms", "5", "--upstream", "127.0.0.1:99999"], "HOST:PORT"),
    ([], "--delay-ms"),
])
def test_proxy_cli_says_what_is_wrong(relay_name: str, args: list[str], needle: str) -> None:
    result = subprocess.run([*relay_command(relay_name), "--listen", "127.0.0.1:0",
                             "--upstream", "127.0.0.1:1", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None,
                    reason="needs util-linux's setpriv to drop CAP_SYS_NICE")
def test_proxy_stays_on_the_normal_scheduler_where_real_time_is_not_permitted(
        relay_name: str) -> None:
    import sys

    # Without CAP_SYS_NICE and with RLIMIT_RTPRIO 0, SCHED_FIFO is refused: the proxy still
    # starts, and says "sched=other"; the harness's own check agrees.
    command = [*relay_command(relay_name), "--listen", "127.0.0.1:0",
               "--upstream", "127.0.0.1:1", "--delay-ms", "0", "--realtime-priority", "10"]
    check = [sys.executable, "-c", "from bench.latency.proxy import realtime_permitted; "
                                   "print(realtime_permitted())"]
    drop = ["setpriv", "--bounding-set", "-sys_nice"]

    def no_rtprio() -> None:
        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))

    verdict = subprocess.run(drop + check, capture_output=True, text=True, timeout=30,
                             cwd=ROOT, preexec_fn=no_rtprio)
    assert verdict.stdout.strip() == "False", verdict.stderr
    proc = subprocess.Popen(drop + command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, preexec_fn=no_rtprio)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening ") and line.split()[-1] == "sched=other", line
        assert os.sched_getscheduler(proc.pid) != os.SCHED_FIFO
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.alone
def test_proxy_session_routes_both_ways_and_leaves_nothing(echo: EchoServer) -> None:
    session = open_latency("proxy", 30, cpus=sorted(os.sched_getaffinity(0)))
    assert isinstance(session, ProxySession)
    with session:
        db_host, db_port = session.db_endpoint("127.0.0.1", echo.port)
        client_host, client_port = session.client_endpoint(echo.port)
        assert (db_host, client_host) == ("127.0.0.1", "127.0.0.1")
        assert db_port != echo.port and client_port != echo.port
        pids = session.pids()
        assert len(pids) == 2
        loop = "epoll" if choose().name == "c" else EVENT_LOOP  # the C relay where it builds
        assert session.event_loops() == [loop, loop]
        # Real-time where permitted (as root here), as each proxy reported and as the kernel
        # has it; else the normal scheduler, said so.
        expected = "fifo" if realtime_permitted() else "other"
        assert session.schedulings() == [expected, expected]
        assert all((os.sched_getscheduler(pid) == os.SCHED_FIFO) == (expected == "fifo")
                   for pid in pids)
        assert 30 <= statistics.median(round_trips_ms(client_host, client_port, 5)) < 40
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_netem_topology_commands() -> None:
    topo = Topology(owner_pid=4194303, index=7)
    assert len(topo.host_dev) <= 15 and len(topo.ns_dev) <= 15
    cmds = topo.setup_commands(150)
    assert cmds[0] == ["ip", "netns", "add", "asyncdj-4194303-7"]
    assert ["ip", "link", "add", topo.host_dev, "type", "veth", "peer", "name",
            topo.ns_dev] in cmds
    assert ["ip", "link", "set", topo.ns_dev, "netns", topo.netns] in cmds
    assert cmds[-1] == ["tc", "-n", topo.netns, "qdisc", "add", "dev", topo.ns_dev, "root",
                        "netem", "delay", "150ms", "limit", str(NETEM_LIMIT)]
    assert not any(cmd[0] == "tc" for cmd in topo.setup_commands(0))  # 0 ms: no qdisc
    assert topo.teardown_commands()[0] == ["ip", "netns", "delete", topo.netns]
    host_net = topo.host_ip.rsplit(".", 1)
    ns_net = topo.ns_ip.rsplit(".", 1)
    assert host_net[0] == ns_net[0] and int(ns_net[1]) == int(host_net[1]) + 1
    assert netem_qdisc_command("ns", "eth0", 5)[-3:] == ["5ms", "limit", str(NETEM_LIMIT)]


def test_netem_session_wraps_the_server_and_points_at_the_veth(monkeypatch) -> None:
    ran: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("bench.latency.netem._run", fake_run)
    session = NetemSession(200)
    topo = session.topology
    assert session.command_prefix == ["ip", "netns", "exec", topo.netns]
    assert session.server_bind_host == topo.ns_ip
    # PostgreSQL on loopback (the harness's connections) and on the host's veth end.
    assert session.pg_listen_host == f"127.0.0.1,{topo.host_ip}"
    assert session.db_endpoint("ignored", 5432) == (topo.host_ip, 5432)
    assert session.client_endpoint(8000) == (topo.ns_ip, 8000)
    assert ["tc", "-n", topo.netns, "qdisc", "add", "dev", topo.ns_dev, "root", "netem",
            "delay", "200ms", "limit", str(NETEM_LIMIT)] in ran
    session.close()
    assert ran[-2] == ["ip", "netns", "delete", topo.netns]


def test_auto_falls_back_to_the_proxy_and_says_why(monkeypatch) -> None:
    monkeypatch.setattr(latency_auto, "netem_problem", lambda: "kernel has no sch_netem")
    assert resolve_backend("auto") == ("proxy", "netem unavailable: kernel has no sch_netem")
    with pytest.raises(LatencyError, match="netem cannot run here: kernel has no sch_netem"):
        resolve_backend("netem")
    monkeypatch.setattr(latency_auto, "netem_problem", lambda: None)
    assert resolve_backend("auto")[0] == "netem"


# What this kernel's tc prints when it parsed every option of the command and the kernel
# then refused the qdisc kind: proof that tc accepts the command, short of running netem.
NO_NETEM_KERNEL = "Error: Specified qdisc kind is unknown."

needs_root_and_iproute2 = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"),
    reason="needs root and iproute2 (ip, tc) to build a scratch network namespace")


def run_command(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def scratch_namespace() -> Iterator[str]:
    netns = f"asyncdj-test{os.getpid()}"
    made = run_command(["ip", "netns", "add", netns])
    assert made.returncode == 0, made.stderr
    try:
        run_command(["ip", "-n", netns, "link", "set", "lo", "up"])
        yield netns
    finally:
        run_command(["ip", "netns", "delete", netns])


@needs_root_and_iproute2
def test_the_netem_topology_commands_run_and_tc_parses_the_qdisc() -> None:
    """Every command a netem session runs, run for real; the qdisc either goes on (and tc
    shows the delay and limit asked for) or fails only on the kernel's missing sch_netem."""
    topology = Topology(owner_pid=os.getpid(), index=90)
    *links, qdisc = topology.setup_commands(150)
    assert qdisc[0] == "tc"
    try:
        for cmd in links:
            result = run_command(cmd)
            assert result.returncode == 0, (cmd, result.stderr)
        result = run_command(qdisc)
        if result.returncode == 0:
            shown = run_command(["tc", "-n", topology.netns, "qdisc", "show", "dev",
                                 topology.ns_dev]).stdout
            assert "netem" in shown and "delay 150ms" in shown, shown
            assert f"limit {NETEM_LIMIT}" in shown, shown
        else:
            assert result.stderr.strip() == NO_NETEM_KERNEL, (qdisc, result.stderr)
    finally:
        for cmd in topology.teardown_commands():
            run_command(cmd)
    assert topology.netns not in run_command(["ip", "netns", "list"]).stdout


@needs_root_and_iproute2
def test_tc_rejects_a_mistyped_netem_option_before_the_kernel_is_asked() -> None:
    """The control for the test above: on this machine a bad option fails in tc's own
    parser, with another message, so NO_NETEM_KERNEL does prove the options parsed."""
    with scratch_namespace() as netns:
        command = netem_qdisc_command(netns, "lo", 150)
        mistyped = ["dlay" if word == "delay" else word for word in command]
        result = run_command(mistyped)
    assert result.returncode != 0
    assert result.stderr.strip() != NO_NETEM_KERNEL
    assert 'What is "dlay"?' in result.stderr


@needs_root_and_iproute2
def test_the_probe_agrees_with_tc_on_this_machine() -> None:
    """The probe's answer is tc's own, on the command the harness builds."""
    with scratch_namespace() as netns:
        tc = run_command(netem_qdisc_command(netns, "lo", 150))
    problem = latency_auto.netem.probe()
    assert "asyncdj-probe" not in run_command(["ip", "netns", "list"]).stdout  # cleaned up
    if tc.returncode == 0:
        assert problem is None
        assert resolve_backend("auto")[0] == "netem"
    else:
        assert tc.stderr.strip() == NO_NETEM_KERNEL, tc.stderr
        assert problem == f"kernel has no sch_netem (tc: {NO_NETEM_KERNEL})"


def test_none_refuses_a_latency() -> None:
    with pytest.raises(LatencyError, match="none cannot add 100 ms"):
        open_latency("none", 100)
    with open_latency("none", 0) as session:
        assert session.db_endpoint("127.0.0.1", 5) == ("127.0.0.1", 5)
