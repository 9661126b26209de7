"""Docker mode: images built from the host's wheelhouse, one smoke cell per interface
(WSGI: sync_gunicorn, ASGI: async_unlimited) through docker/compose.yaml, and PostgreSQL
dying mid-cell (the db container's postmaster killed), as tests/test_run.py does locally:
both in one run.

Where no Docker engine (or no base image) can be had, the integration test skips with the
reason; .ci/run sets one up as root (docker/ci-engine.sh).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import docker
from bench.cli import build_parser
from bench.latency.netem import NETEM_LIMIT
from bench.processes import process_tree
from bench.runner import RunConfig, plan_cells
from bench.variants import discover, select

# One xdist worker runs the module in order: both runs use the same compose project.
pytestmark = pytest.mark.xdist_group("docker")

PROJECT = "asyncdj-test"  # one compose project (and PostgreSQL template volume) for the tests
REPO = Path(__file__).resolve().parent.parent
CI_LOG = Path(os.environ.get("BENCH_CI_ENGINE_LOG", "/tmp/asynchronize-django-ci-engine.log"))


def _ci_note() -> str:
    try:
        lines = CI_LOG.read_text().strip().splitlines()
    except OSError:
        return ""
    skips = [line for line in lines if "SKIP:" in line]
    return f" [{skips[-1]}]" if skips else ""


def test_netem_command_delays_the_server_containers_egress_without_drops() -> None:
    assert docker.netem_command(100) == ["tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                                         "delay", "100ms", "limit", str(NETEM_LIMIT)]


def test_wheelhouse_covers_the_project_and_every_variant() -> None:
    reqs = docker.wheelhouse_requirements()
    for variant in discover().values():
        for req in variant.requires:
            assert req in reqs
    assert any(r.startswith("django") for r in reqs)
    assert any(r.startswith("setuptools") for r in reqs)


def test_every_variant_dockerfile_starts_through_the_serve_entry_point() -> None:
    for variant in discover().values():
        text = (variant.folder / "Dockerfile").read_text()
        assert "FROM ${BASE_IMAGE}" in text
        entry = json.loads(text.split("ENTRYPOINT", 1)[1].strip().splitlines()[0])
        assert entry == ["python", "-m", "bench", "serve", variant.name, "--external-db",
                         "--host", "0.0.0.0", "--port", "8000"]


def test_docker_mode_without_an_engine_is_a_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no docker command anywhere
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--docker", "--profile",
                             "smoke", "--latencies", "0", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no docker command: install Docker (Debian: apt-get install docker.io)"]


def test_compose_waits_on_the_engine_as_long_as_its_own_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose's own HTTP timeout (60 s by default) follows the command's timeout,
    unless the user set one: on vfs a container's creation took longer in CI."""
    calls: list[tuple[list[str], float, dict[str, str] | None]] = []
    monkeypatch.setattr(docker, "_run", lambda cmd, timeout_s, check, env: calls.append(
        (cmd, timeout_s, env)))
    engine = docker.Engine("docker", ("docker-compose",), "20.10", "1.29.2", "vfs")
    compose = docker.Compose(engine, "proj", proxy=False)
    compose.run(["ps", "-q"], {"PATH": "/bin"}, timeout_s=300)
    compose.run(["ps", "-q"], {"COMPOSE_HTTP_TIMEOUT": "900"}, timeout_s=120)
    assert calls[0][0][:3] == ["docker-compose", "-p", "proj"] and calls[0][0][-2:] == [
        "ps", "-q"]
    assert calls[0][2] == {"PATH": "/bin", "COMPOSE_HTTP_TIMEOUT": "300"}
    assert calls[1][2] == {"COMPOSE_HTTP_TIMEOUT": "900"}


def test_the_server_container_gets_the_runs_cpu_work() -> None:
    """compose.yaml hands the container's `bench serve` the run's cpu/ work (BENCH_CPU_LOOP,
    BENCH_CPU_MS from DockerRunner), and bench serve takes both: a CPU-time budget where
    the run has one (0: none), else the loop."""
    text = (REPO / "docker" / "compose.yaml").read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith('command: ["--cpu-loop"'))
    command = json.loads(line.split("command:", 1)[1])

    def expand(arg: str, env: dict[str, str]) -> str:  # compose's ${NAME:-default}
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), arg)

    parser = build_parser()
    for env, want in (({"BENCH_CPU_LOOP": "1000", "BENCH_CPU_MS": "0"}, (1000, 0.0)),
                      ({"BENCH_CPU_LOOP": "10000000", "BENCH_CPU_MS": "670"}, (10**7, 670.0)),
                      ({}, (10**7, 0.0))):
        args = parser.parse_args(["serve", "sync_gunicorn", "--external-db",
                                  *(expand(a, env) for a in command)])
        assert (args.cpu_loop, args.cpu_ms) == want, env


@pytest.fixture(scope="module")
def engine() -> docker.Engine:
    try:
        found = docker.find_engine()
    except docker.DockerError as exc:
        pytest.skip(f"Docker mode cannot run here: {exc}{_ci_note()}")
    base = docker.choose_base_image(found, None)
    if found.run(["image", "inspect", base], 30, check=False).returncode != 0:
        pytest.skip(f"no base image here ({docker.DEFAULT_BASE} or {docker.OFFLINE_BASE}; "
                    f"build one with docker/offline-base){_ci_note()}")
    return found


# The run of the integration test below: one smoke cell per interface (sync_gunicorn: WSGI,
# async_unlimited: ASGI), and first a sync_gthread cell whose PostgreSQL is killed.
VARIANTS = ["sync_gthread", "sync_gunicorn", "async_unlimited"]
KILLED = "sync_gthread"


def seed_running_first(variant: str) -> int:
    """A --seed whose shuffled order runs `variant`'s cell first."""
    config = RunConfig(variants=VARIANTS, routes=["io_read"], latencies_ms=[20])
    chosen = select(discover(), VARIANTS)
    return next(seed for seed in range(1000)
                if plan_cells(config, chosen, seed)[0].variant.name == variant)


@pytest.mark.integration
def test_smoke_cells_per_interface_and_postgres_dying_mid_cell(engine: docker.Engine,
                                                               tmp_path: Path) -> None:
    """Two tests in one run (each Docker run builds or checks the images and each cell
    starts its containers: about a minute per cell on vfs). One smoke cell per interface
    (WSGI: sync_gunicorn, ASGI: async_unlimited) runs in containers and is measured; and,
    as tests/test_run.py does locally, PostgreSQL killed during the first cell's load
    (sync_gthread's) fails that cell with the reason while the run goes on: the next cells
    get a new db container and are measured."""
    out = tmp_path / "run"
    env = {**os.environ, "BENCH_COMPOSE_PROJECT": PROJECT}
    killed_id = f"{KILLED}__io_read__20ms__r1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--docker", "--variants", ",".join(VARIANTS),
         "--routes", "io_read", "--latencies", "20", "--seed", str(seed_running_first(KILLED)),
         "--profile", "smoke", "--rows", "2000", "--cpu-loop", "1000", "--out", str(out),
         "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        live = out / "cells" / killed_id / ".locust"
        deadline = time.monotonic() + 900
        while not any(live.glob("start.*")):  # Locust's test has started in the container
            assert proc.poll() is None and time.monotonic() < deadline, "no load started"
            time.sleep(0.2)
        time.sleep(2)
        how = _kill_postmaster(engine)
        _, stderr = proc.communicate(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr[-3000:]  # one cell failed

    run = json.loads((out / "run.json").read_text())
    assert run["mode"] == "docker" and run["status"] == "complete"
    assert run["cells"][0] == killed_id  # the order the cells ran in
    assert run["latency_backend"] in {"netem", "proxy"}
    assert run["latency_backend_reason"]
    assert run["postgres_version"].startswith("16")
    assert set(run["docker"]["images"]) >= {docker.BASE_TAG,
                                            docker.image_tag("sync_gunicorn"),
                                            docker.image_tag("async_unlimited")}
    killed = json.loads((out / "cells" / killed_id / "cell.json").read_text())
    assert killed["status"] == "failed" and "PostgreSQL exited" in killed["reason"], (how,
                                                                                       killed)
    assert killed["mode"] == "docker"
    for cell_id in run["cells"][1:]:
        folder = out / "cells" / cell_id
        cell = json.loads((folder / "cell.json").read_text())
        assert cell["status"] == "ok", cell["reason"]
        assert cell["mode"] == "docker"
        assert cell["stopped_by"] in {"precision", "max_hold"}  # the runner's own hold
        assert cell["metrics"]["steady_srps"] > 0
        assert cell["metrics"]["peak_server_rss_mib"] > 0
        assert cell["metrics"]["peak_db_connections"] is not None
        for name in ("stats_history.csv", "stats.csv", "responses.csv", "resources.csv",
                     "server.log"):
            assert (folder / name).is_file(), name
        assert len((folder / "responses.csv").read_text().splitlines()) > 1
    assert sorted(json.loads((out / "cells" / c / "cell.json").read_text())["variant"]
                  for c in run["cells"][1:]) == ["async_unlimited", "sync_gunicorn"]
    with (out / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["variant"], r["status"]) for r in rows) == [
        ("async_unlimited", "ok"), (KILLED, "failed"), ("sync_gunicorn", "ok")]
    assert _project_containers(engine) == "", "containers left running"


def _project_containers(engine: docker.Engine, service: str | None = None) -> str:
    filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
    if service:
        filters += ["--filter", f"label=com.docker.compose.service={service}"]
    return engine.run(["ps", "-q", *filters], 30).stdout.strip()


def _kill_postmaster(engine: docker.Engine) -> str:
    """SIGKILL to the db container's postmaster through its host pid (as root), else the
    container itself; says which."""
    db = _project_containers(engine, "db").splitlines()[0]
    for proc in process_tree(int(docker.container_state(engine, db)["Pid"])):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if cmdline and cmdline[0].endswith("/postgres") and "-D" in cmdline:
            try:
                proc.send_signal(signal.SIGKILL)
                return f"postmaster {proc.pid} killed"
            except psutil.AccessDenied:
                break
    engine.run(["kill", db], 60)
    return "db container killed"
