"""Load from several hosts, for real: a second "host" is a network namespace joined to this
one by a veth pair (bench/latency/netem.py's Topology), running `python -m bench
load-worker`; the run's Locust master waits for it and for a worker on this host."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.latency.netem import Topology
from bench.net import free_port
from bench.paths import repo_root

# One xdist worker runs these in order with the other `bench run` and namespace tests.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("runs")]

SMALL = ["--rows", "2000", "--cpu-loop", "1000", "--no-report"]


def namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "ip (iproute2) not found"
    return None


def netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.split()}


@contextlib.contextmanager
def second_host(index: int) -> Iterator[Topology]:
    """A namespace with its own veth address; removed afterwards, also on failure."""
    topology = Topology(os.getpid(), index)
    try:
        for cmd in topology.setup_commands(0):
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        yield topology
    finally:
        for cmd in topology.teardown_commands():
            subprocess.run(cmd, capture_output=True, timeout=30)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo_root())}


@contextlib.contextmanager
def load_worker(master: str, netns: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """`python -m bench load-worker` (in `netns` when given), stopped by SIGTERM after."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "bench", "load-worker",
                             "--master", master], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None \
            else []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"a Locust worker outlived load-worker: {alive}"


def cell(out: Path, cell_id: str) -> dict[str, Any]:
    return json.loads((out / "cells" / cell_id / "cell.json").read_text())


def sources(cell_dir: Path) -> set[str]:
    with (cell_dir / "responses.csv").open(newline="") as handle:
        return {row["source"] for row in csv.DictReader(handle)}


def wait_until(predicate: Any, proc: subprocess.Popen[str], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.skipif(namespaces_unavailable() is not None,
                    reason=namespaces_unavailable() or "")
def test_load_from_two_hosts_and_a_worker_killed_mid_cell(tmp_path: Path) -> None:
    """Three repeats of one cell, load from a worker here and one in another namespace:
    repeat 1 has requests from both (and cell.json counts 2 workers); the remote worker's
    Locust is killed in repeat 2, which fails with a one-line reason; its load-worker
    re-joins and repeat 3 runs with both again. The namespace is gone afterwards."""
    out = tmp_path / "run"
    before = netns_names()
    with second_host(index=97) as host:
        port = free_port(host.host_ip)
        master = f"{host.host_ip}:{port}"
        with load_worker(master) as _local, load_worker(master, host.netns) as remote:
            run = subprocess.Popen(
                [sys.executable, "-m", "bench", "run", "--variants", "sync_gunicorn",
                 "--routes", "cpu", "--latencies", "0", "--repeats", "3", "--profile", "smoke",
                 "--latency-backend", "none", "--load-workers", "2", "--master-bind",
                 host.host_ip, "--master-port", str(port), "--out", str(out), *SMALL],
                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                live = out / "cells" / "sync_gunicorn__cpu__0ms__r2" / ".locust"
                # Both workers are sending rows to the master of repeat 2.
                wait_until(lambda: len(list(live.glob("responses.w*.csv"))) == 2, run)
                time.sleep(2)
                worker = psutil.Process(remote.pid).children()[0]
                assert "--worker" in worker.cmdline()
                worker.kill()
                _, stderr = run.communicate(timeout=400)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
    assert host.netns not in netns_names() and netns_names() <= before | netns_names()
    assert run.returncode == 1, stderr[-3000:]  # one cell failed
    assert f"--master HOST:{port}" in stderr  # where workers should connect
    for repeat in (1, 3):
        cell_id = f"sync_gunicorn__cpu__0ms__r{repeat}"
        record = cell(out, cell_id)
        assert record["status"] == "ok", record["reason"]
        assert record["load_workers"] == 2
        assert sources(out / "cells" / cell_id) == {"w0", "w1"}
        addresses = {w["address"] for w in record["metrics"]["load_workers"]}
        assert host.ns_ip in addresses, addresses  # one worker ran on the "other host"
        assert all(w["mean_cpu_pct"] is not None for w in record["metrics"]["load_workers"])
        assert record["not_measured"] == []
    failed = cell(out, "sync_gunicorn__cpu__0ms__r2")
    assert failed["status"] == "failed"
    first_line = failed["reason"].splitlines()[0]
    workers = [cell(out, f"sync_gunicorn__cpu__0ms__r{r}")["metrics"]["load_workers"]
               for r in (1, 3)]
    print(f"repeat 2: {first_line}; repeats 1 and 3: {workers}")
    assert "load worker" in first_line and "mid-cell" in first_line, failed["reason"]
    assert host.ns_ip in first_line or "stopped answering" in first_line
    assert f"load worker {failed['reason'].split()[2]}" in stderr  # the run printed it


def one_worker_run(out: Path, port: int) -> subprocess.Popen[str]:
    """`bench run` of one smoke cpu/ cell whose master on 127.0.0.1:port waits for one
    load worker."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--variants", "sync_gunicorn", "--routes",
         "cpu", "--latencies", "0", "--profile", "smoke", "--latency-backend", "none",
         "--load-workers", "1", "--master-bind", "127.0.0.1", "--master-port", str(port),
         "--out", str(out), *SMALL], env=env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def test_a_worker_that_joins_late_still_gets_the_whole_hold(tmp_path: Path) -> None:
    """The cell's load worker joins 12 s after its master started, longer than the smoke
    hold (8 s): the hold counts from when the worker's users start, not from the master's
    start, so the cell runs its 8 s and records requests (it used to stop the test as
    it began: no request, the server idle, the cell failed)."""
    out = tmp_path / "run"
    port = free_port("127.0.0.1")
    run = one_worker_run(out, port)
    try:
        live = out / "cells" / "sync_gunicorn__cpu__0ms__r1" / ".locust"
        wait_until(live.is_dir, run)  # the master has started
        time.sleep(12)
        with load_worker(f"127.0.0.1:{port}"):
            _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr[-3000:]
    record = cell(out, "sync_gunicorn__cpu__0ms__r1")
    assert record["status"] == "ok", record["reason"]
    assert record["metrics"]["window_s"] == 8.0 and record["metrics"]["total_requests"] > 0


def test_a_worker_whose_master_vanished_joins_the_next_one(tmp_path: Path) -> None:
    """A load worker joins a Locust master that is then killed (SIGKILL: no quit message)
    before giving it a test. The worker's Locust quits within MASTER_SILENT_S (10 s) plus
    a few, not after Locust's 60 s (or never, when the master left before its first
    heartbeat's answer), and the next run's master on the same port gets it: its cell is
    ok. CI's red run: repeat 3 of the two-host test waited 60 s for a worker stuck so."""
    port = free_port("127.0.0.1")
    master = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(repo_root() / "load" / "locustfile.py"),
         "--master", "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port",
         str(port), "--expect-workers", "2", "-u", "1", "-r", "1", "--loglevel", "INFO",
         "CpuUser"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        with load_worker(f"127.0.0.1:{port}") as worker:
            assert master.stderr is not None and worker.stdout is not None
            deadline = time.monotonic() + 60
            while "1 workers connected" not in (line := master.stderr.readline()):
                assert line and time.monotonic() < deadline, "the worker never joined"
            # The master logs the worker before its ack has left (CI killed it in between:
            # a worker never acknowledged keeps asking, every 5 s, and joins whichever
            # master comes next on the port). After 5 s they have swapped heartbeats.
            time.sleep(5)
            master.kill()
            master.wait()
            killed = time.monotonic()
            threading.Thread(target=lambda: [lines.append(line) for line in worker.stdout or []],
                             daemon=True).start()
            while not any("Locust run 1 ended" in line for line in lines):
                assert time.monotonic() - killed < 45, f"the worker waited on: {lines}"
                time.sleep(0.2)
            left_after = time.monotonic() - killed
            out = tmp_path / "run"
            run = one_worker_run(out, port)
            _, stderr = run.communicate(timeout=240)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    print(f"the worker left {left_after:.1f} s after its master was killed: {lines}")
    assert left_after < 20
    assert any("exit code 4" in line for line in lines), lines
    assert run.returncode == 0, stderr[-3000:]
    record = cell(out, "sync_gunicorn__cpu__0ms__r1")
    assert record["status"] == "ok", record["reason"]
    assert record["load_workers"] == 1 and record["metrics"]["total_requests"] > 0


@contextlib.contextmanager
def bench_serve(variant: str) -> Iterator[tuple[str, str, str]]:
    """`python -m bench serve VARIANT`: (URL, DSN of its PostgreSQL, its password);
    stopped by Ctrl-C afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", "serve", variant, "--rows", "2000",
                             "--cpu-loop", "1000"], env={**env(), "BENCH_SERVE_LOG": os.devnull},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = dsn = password_file = ""
        deadline = time.monotonic() + 240
        while not dsn and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.communicate()[1][-3000:]
            if " serving at " in line:
                url = line.split(" serving at ")[1].split()[0].rstrip("/")
            if "--target-db: " in line:
                dsn = line.split("--target-db: ")[1].split()[0]
                password_file = line.split("$(cat ")[1].split(")")[0]
        assert url and dsn, "bench serve did not print its URL and DSN"
        yield url, dsn, Path(password_file).read_text().strip()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_target_elsewhere_with_its_database(tmp_path: Path) -> None:
    """--target against `bench serve`, --target-db at its PostgreSQL: the cell counts the
    server's DB connections from pg_stat_activity (async_unlimited holds one per in-flight
    request) and names what it did not measure, with those columns empty, never 0. A
    DSN that does not connect is a one-line error before any cell."""
    out = tmp_path / "run"
    with bench_serve("async_unlimited") as (url, dsn, password):
        args = ["run", "--target", url, "--target-name", "remote", "--routes", "io_read",
                "--latencies", "0", "--profile", "smoke", "--cpu-loop", "1000", "--no-report"]
        run_env = {**env(), "PGPASSWORD": password}
        bad = subprocess.run([sys.executable, "-m", "bench", *args, "--target-db",
                              dsn.rsplit("/", 1)[0] + "/no_such_db", "--out", str(out)],
                             env=run_env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2, bad.stderr[-2000:]
        assert bad.stderr.startswith("error: cannot connect to --target-db: ")
        assert len(bad.stderr.strip().splitlines()) == 1
        result = subprocess.run([sys.executable, "-m", "bench", *args, "--target-db", dsn,
                                 "--out", str(out)],
                                env=run_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = cell(out, "remote__io_read__0ms__r1")
    assert record["status"] == "ok", record["reason"]
    metrics = record["metrics"]
    print(f"peak DB connections {metrics['peak_db_connections']} of "
          f"{record['settings']['pg_max_connections']}; not measured {record['not_measured']}")
    assert metrics["peak_db_connections"] > 5  # many in-flight ORM requests, each its own
    assert record["settings"]["target"] == url
    assert record["not_measured"] == ["server RSS", "server CPU", "server threads",
                                      "PostgreSQL memory", "machine speed"]
    assert metrics["peak_server_rss_mib"] is None and metrics["peak_server_threads"] is None
    with (out / "cells" / "remote__io_read__0ms__r1" / "resources.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["server_rss_mib"] == "" and r["db_connections"] != ""
                        and r["machine_probe_ms"] == "" for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["latency_backend"] == "none"
    assert any("not measured" in note for note in run["caveats"])
    report = subprocess.run([sys.executable, "-m", "bench", "report", str(out)], env=env(),
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert ("not measured in every cell: server RSS, server CPU, server threads, PostgreSQL "
            "memory, machine speed") in (out / "report.md").read_text()


def test_ctrl_c_mid_cell_ends_the_workers_run_and_load_worker_leaves_nothing(
        tmp_path: Path) -> None:
    """Ctrl-C to `bench run --load-workers` mid-cell: it stops within 10 s and its master
    tells the worker to quit (not 60 s of load on a heartbeat timeout), the load-worker
    waits for the next master; Ctrl-C to the load-worker leaves no Locust behind."""
    out = tmp_path / "run"
    port = free_port("127.0.0.1")
    with load_worker(f"127.0.0.1:{port}") as worker:
        run = one_worker_run(out, port)
        live = out / "cells" / "sync_gunicorn__cpu__0ms__r1" / ".locust"
        try:
            wait_until(lambda: (live / "responses.w0.csv").is_file(), run)
            time.sleep(2)
            first = psutil.Process(worker.pid).children()[0]
            t0 = time.monotonic()
            run.send_signal(signal.SIGINT)
            run.communicate(timeout=30)
            assert run.returncode == 130 and time.monotonic() - t0 < 10
            first.wait(timeout=5)  # its run ended: the master told it to quit
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        worker.send_signal(signal.SIGINT)
        output, _ = worker.communicate(timeout=15)
        assert worker.returncode == 130, output
        assert "Locust run 1 ended (exit code 0)" in output and "stopped" in output
