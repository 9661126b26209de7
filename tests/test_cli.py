"""Every door gives a clear error: exit code 2, one line, no traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.latency import LatencyError, resolve_backend

# `bench run` probes netem in a namespace of its own: on the xdist worker of the other
# namespace tests (tests/test_run.py's Ctrl-C test compares `ip netns list`).
pytestmark = pytest.mark.xdist_group("runs")


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--variants", "nope"], ["unknown variant 'nope'", "sync_gunicorn"]),
    (["run", "--routes", "cpu,foo"], ["unknown route 'foo'", "io_create"]),
    (["run", "--latencies", "0,-5"], ["latencies must be integers >= 0", "'-5'"]),
    (["run", "--latencies", "fast"], ["latencies must be integers"]),
    (["run", "--latencies", "0,0"], ["repeated"]),
    (["run", "--profile", "fast"], ["unknown profile 'fast'", "quick"]),
    (["run", "--repeats", "0"], ["--repeats", ">= 1"]),
    (["run", "--resume", "/nonexistent/run"], ["not a results folder"]),
    (["run", "--pg-bin", "/tmp"], ["holds no PostgreSQL binaries", "pgserver"]),
    (["run", "--latency-backend", "tc"], ["unknown latency backend 'tc'"]),
    (["run", "--load-processes", "x"], ["--load-processes"]),
    (["run", "--conn-max-age", "0,-60"], ["--conn-max-age must be integers >= 0", "'-60'"]),
    (["run", "--conn-max-age", "60,60"], ["repeated"]),
    (["run", "--pgbouncer-bin", "/tmp"], ["/tmp holds no pgbouncer program", "apt-get"]),
    (["serve", "async_pgbouncer", "--pgbouncer-bin", "/tmp"], ["holds no pgbouncer"]),
    (["run", "--load-workers", "0"], ["--load-workers", ">= 1", "'0'"]),
    (["run", "--master-port", "5557"], ["go with --load-workers"]),
    (["run", "--load-workers", "2", "--master-port", "99999"], ["TCP port", "99999"]),
    (["run", "--load-workers", "2", "--load-processes", "2"], ["exclude each other"]),
    (["run", "--load-workers", "2", "--variants", "sync_gunicorn", "--latencies", "0,100",
      "--latency-backend", "proxy"], ["reachable from the load hosts"]),
    (["run", "--target", "notaurl"], ["--target", "http(s) URL", "'notaurl'"]),
    (["run", "--target", "ftp://host/"], ["http(s) URL"]),
    (["run", "--target-db", "postgresql://bench@db/posts"], ["go with --target URL"]),
    (["run", "--target", "http://127.0.0.1:9", "--variants", "sync_gunicorn"],
     ["not --variants"]),
    (["run", "--target", "http://127.0.0.1:9", "--latencies", "0,100"], ["adds no latency"]),
    (["run", "--target", "http://127.0.0.1:9", "--target-name", "Big Name"], ["lowercase"]),
    (["load-worker", "--master", "host:notaport"], ["HOST:PORT", "'host:notaport'"]),
    (["load-worker", "--master", "nohost"], ["HOST:PORT"]),
    (["load-worker"], ["--master", "required"]),
    (["load", "http://127.0.0.1:9", "--route", "cpu", "--workers", "2", "--processes", "2",
      "--out", "/tmp/bench-cli-test-load"], ["exclude each other"]),
    (["run", "--docker", "--load-workers", "2", "--master-port", "6000"], ["do not apply"]),
    (["serve", "nope"], ["unknown variant 'nope'"]),
    (["report", "/nonexistent/run"], ["not a results folder"]),
    (["compare", "/nonexistent/a", "/nonexistent/b"], ["not a results folder"]),
    (["compare", "--min-change", "abc", "/nonexistent/a", "/nonexistent/b"],
     ["--min-change", "'abc'"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_arguments(args: list[str], needles: list[str]) -> None:
    assert_one_line_error(bench(*args), *needles)


def test_netem_where_the_kernel_lacks_it() -> None:
    try:
        resolve_backend("netem")
    except LatencyError:
        pass
    else:
        pytest.skip("this machine has a working netem; the refusal cannot be shown here")
    assert_one_line_error(bench("run", "--latency-backend", "netem", "--variants",
                                "sync_gunicorn", "--routes", "cpu", "--latencies", "0"),
                          "netem")


def test_an_unknown_proxy_program_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_PROXY_RELAY", "rust")
    assert_one_line_error(bench("run", "--latency-backend", "proxy", "--variants",
                                "sync_gunicorn", "--routes", "cpu", "--latencies", "100",
                                "--out", str(tmp_path / "run")),
                          "BENCH_PROXY_RELAY='rust'", "c, python")
    assert not (tmp_path / "run").exists()


def test_resume_with_another_configuration_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    config = {"variants": ["sync_gunicorn"], "routes": ["cpu"], "latencies_ms": [0],
              "profile": "smoke", "repeats": 1, "latency_backend": "proxy",
              "load_processes": 1, "target": None, "pg_max_connections": None,
              "pool_sizes": None, "cpu_loop": 1000, "rows": 1000}
    (folder / "run.json").write_text(json.dumps({"format": 1, "config": config}))
    result = bench("run", "--resume", str(folder), "--variants", "sync_gunicorn", "--routes",
                   "cpu", "--latencies", "0,100", "--profile", "smoke", "--latency-backend",
                   "proxy", "--cpu-loop", "1000", "--rows", "1000")
    assert_one_line_error(result, "configuration differs", "latencies_ms")


def test_out_folder_holding_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{}")
    assert_one_line_error(bench("run", "--out", str(tmp_path), "--routes", "cpu"),
                          "already holds a run", "--resume")


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(bench("serve", "sync_gunicorn", "--port", str(port)),
                              f"127.0.0.1:{port}", "omit --port")


def test_help_on_every_command() -> None:
    for command in ([], ["variants"], ["requirements"], ["serve"], ["run"], ["report"], ["db"],
                    ["load"], ["compare"]):
        result = bench(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
