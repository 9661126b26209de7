"""The netem backend end to end, for real, inside User-Mode Linux (tests/uml.py).

This machine's kernel has no sch_netem; the UML kernel has it as a module. One boot runs
`bench run --latency-backend netem` on one tiny cell with the harness's own namespace,
veth and qdisc code (nothing in bench/ knows about UML), then times one-byte round trips
through a NetemSession at 0 and 100 ms. About 40 s on a 2-core machine.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import uml  # tests/uml.py (pytest puts tests/ on sys.path)

from bench.pg_install import ensure_os_user

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("runs"),  # with the other `bench run` tests, on one xdist worker
    pytest.mark.skipif(
        Path(__file__).resolve().is_relative_to("/tmp"),
        reason="the checkout is under /tmp, which the UML init script hides behind a tmpfs"),
]

# One-byte round trips through the harness's NetemSession: an echo server in the session's
# namespace (started with the session's command prefix), timed from the host's side.
RTT_PROBE = r"""
import json, socket, statistics, subprocess, sys, time
from bench.latency.netem import NetemSession
ECHO = ("import socket, sys\n"
        "srv = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
        "conn, _ = srv.accept()\n"
        "while data := conn.recv(64):\n"
        "    conn.sendall(data)\n")
for latency_ms in (0, 100):
    with NetemSession(latency_ms) as session:
        port = session.server_port()
        echo = subprocess.Popen(session.command_prefix + [
            sys.executable, "-c", ECHO, session.server_bind_host, str(port)])
        host, port = session.client_endpoint(port)
        deadline = time.monotonic() + 30
        while True:
            try:
                started = time.perf_counter()
                sock = socket.create_connection((host, port), timeout=5)
                connect_ms = (time.perf_counter() - started) * 1000
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        rtts = []
        for _ in range(5):
            started = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            rtts.append((time.perf_counter() - started) * 1000)
        sock.close()
        echo.wait(timeout=10)
        print("RTT " + json.dumps({"latency_ms": latency_ms, "connect_ms": connect_ms,
                                   "rtt_ms": statistics.median(rtts)}))
"""


@pytest.fixture(scope="module")
def uml_ready() -> None:
    problem = uml.uml_problem()
    if problem:
        pytest.skip(f"User-Mode Linux unavailable: {problem}")
    # The guest's /etc is read-only: PostgreSQL's OS user must exist on the host already.
    ensure_os_user()


def test_netem_cell_end_to_end_in_uml(uml_ready: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = ["python", "-m", "bench", "run", "--latency-backend", "netem",
           "--variants", "sync_gunicorn", "--routes", "io_read", "--latencies", "100",
           "--profile", "tiny", "--rows", "2000", "--no-report", "--out", str(out)]
    probe = ["python", "-c", RTT_PROBE]
    # The cache (PostgreSQL's cluster, owned by benchpg) lives on the guest's tmpfs: hostfs
    # cannot give files to another owner.
    script = f"{shlex.join(run)}; echo BENCH_EXIT=$?; {shlex.join(probe)}"
    result = uml.run_in_uml(["sh", "-c", script], rw=[tmp_path],
                            env={"BENCH_CACHE_DIR": "/tmp/bench-cache"}, timeout_s=240)
    print(f"UML boot + cell + probe: {result.seconds:.1f} s")
    detail = f"{result.output[-3000:]}\n--- console ---\n{result.console[-1500:]}"
    assert result.returncode == 0, detail
    assert "BENCH_EXIT=0" in result.output, detail

    run_json = json.loads((out / "run.json").read_text())
    assert run_json["latency_backend"] == "netem"
    assert run_json["latency_backend_reason"] == "requested (--latency-backend netem)"
    cell = json.loads((out / "cells" / "sync_gunicorn__io_read__100ms__r1" / "cell.json")
                      .read_text())
    assert cell["status"] == "ok", cell.get("reason")
    assert cell["latency_backend"] == "netem"
    # Verification's request to io_read/ crossed the qdisc: at least one delayed reply.
    assert cell["verification_ms"]["io_read"] >= 100, cell["verification_ms"]
    assert cell["metrics"]["total_successes"] > 0 and cell["metrics"]["total_failures"] == 0
    print(f"verification_ms {cell['verification_ms']}; steady sRPS "
          f"{cell['metrics']['steady_srps']}")

    rtt = {row["latency_ms"]: row for row in
           (json.loads(line[4:]) for line in result.output.splitlines()
            if line.startswith("RTT "))}
    assert set(rtt) == {0, 100}, detail
    print(f"netem round trips: {rtt}")
    # netem delays what the server's side sends: the echo (and the SYN-ACK) by 100 ms.
    added = rtt[100]["rtt_ms"] - rtt[0]["rtt_ms"]
    assert 95 <= added <= 150, rtt
    assert rtt[100]["connect_ms"] >= 95, rtt
