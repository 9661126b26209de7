"""Docker mode: the same cells as local mode, each run as containers (docker/compose.yaml).

Per cell: `db` (the embedded PostgreSQL, a fresh database cloned from the template kept in
a volume), `server` (the variant's image, started by `python -m bench serve VARIANT
--external-db`, as in local mode), then `load` (Locust, writing into the cell's folder),
then everything is removed. Latency: netem on the server container's eth0 where the kernel
has sch_netem (probed in a container), else the delaying proxy as a sidecar that owns the
server's network namespace (docker/compose.proxy.yaml).

Images build offline: the host builds a wheelhouse (`pip wheel`), the base image installs
from it, each variant's image is its servers/<variant>/Dockerfile FROM the base.

The harness reaches containers by their bridge-network addresses (Linux) and samples their
processes with psutil through the host's PIDs (`docker inspect`), so it runs on the
engine's host, not inside a container.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.latency.netem import netem_qdisc_command
from bench.latency.proxy import proxied
from bench.paths import repo_root
from bench.pgbouncer import PgBouncer
from bench.postgres import DB_USER, cache_root, stored_secret
from bench.results import read_json
from bench.runner import (
    Cell,
    Deployment,
    LoadRun,
    RunConfig,
    RunError,
    Runner,
    _Phases,
    console,
)
from bench.server import ServerError, is_listening, process_tree
from bench.variants import all_requirements, discover

BASE_TAG = "asynchronize-django-base:latest"
DEFAULT_BASE = "python:3.11-slim"
OFFLINE_BASE = "asynchronize-django-offline-base:bookworm"
SERVER_PORT = 8000
PROXY_PORT = 8001
DB_NAME = "cell"
BUILD_TIMEOUT_S = 1800
DB_READY_TIMEOUT_S = 900.0
SERVER_READY_TIMEOUT_S = 120.0
LOAD_START_TIMEOUT_S = 120.0


class DockerError(Exception):
    """No engine, no compose, an image that cannot be built; one line for the user."""


def docker_dir() -> Path:
    return repo_root() / "docker"


def image_tag(variant: str) -> str:
    return f"asynchronize-django-{variant}:latest"


def _last_line(text: str) -> str:
    """The last non-empty line, at most 300 characters: where a failing tool says why."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


# -- engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    docker: str
    compose: tuple[str, ...]
    server_version: str
    compose_version: str
    storage_driver: str

    def run(self, args: list[str], timeout_s: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return _run([self.docker, *args], timeout_s, check, env)


def _run(cmd: list[str], timeout_s: float = 120, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DockerError(f"`{' '.join(cmd[:4])} ...` did not finish in {timeout_s:.0f} s"
                          ) from None
    except FileNotFoundError:
        raise DockerError(f"{cmd[0]}: command not found") from None
    if check and result.returncode != 0:
        raise DockerError(f"`{' '.join(cmd[:5])}` failed: "
                          f"{_last_line(result.stderr or result.stdout)}")
    return result


def find_engine() -> Engine:
    """The docker CLI, a reachable engine and a compose (plugin, else docker-compose)."""
    docker = shutil.which("docker")
    if docker is None:
        raise DockerError("no docker command: install Docker (Debian: apt-get install docker.io)")
    probe = _run([docker, "info", "--format", "{{.ServerVersion}} {{.Driver}}"], 30, check=False)
    if probe.returncode != 0 or not probe.stdout.strip():
        raise DockerError("no Docker engine reachable (docker info: "
                          f"{_last_line(probe.stderr) or 'no answer'}); start one, e.g. "
                          "dockerd --storage-driver=vfs as root")
    version, _, driver = probe.stdout.strip().partition(" ")
    for compose in ([docker, "compose"], [shutil.which("docker-compose") or ""]):
        if not compose[0]:
            continue
        found = _run([*compose, "version", "--short"], 30, check=False)
        if found.returncode == 0:
            return Engine(docker, tuple(compose), version, found.stdout.strip(), driver)
    raise DockerError("neither `docker compose` nor `docker-compose` works: install one "
                      "(Debian: apt-get install docker-compose)")


class Compose:
    """docker compose on docker/compose.yaml (+ the proxy overlay), one project."""

    def __init__(self, engine: Engine, project: str, proxy: bool) -> None:
        self.engine = engine
        self.project = project
        self.files = [docker_dir() / "compose.yaml"]
        if proxy:
            self.files.append(docker_dir() / "compose.proxy.yaml")

    def run(self, args: list[str], env: dict[str, str], timeout_s: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.engine.compose, "-p", self.project]
        for path in self.files:
            cmd += ["-f", str(path)]
        # docker-compose gives up on the engine after its own 60 s (COMPOSE_HTTP_TIMEOUT):
        # on vfs a container's creation copies its whole image, and with other work beside
        # it that took longer in CI (a cell failed "consider setting COMPOSE_HTTP_TIMEOUT").
        env = {**env, "COMPOSE_HTTP_TIMEOUT": env.get("COMPOSE_HTTP_TIMEOUT")
               or str(int(timeout_s))}
        return _run([*cmd, *args], timeout_s, check, env)

    def up(self, service: str, env: dict[str, str]) -> str:
        """Start one service (a new container) and return its container id."""
        self.run(["up", "-d", "--no-deps", "--force-recreate", "--no-build", service], env)
        cid = self.run(["ps", "-q", service], env).stdout.strip()
        if not cid:
            raise DockerError(f"compose started no container for {service}")
        return cid.splitlines()[0]

    def scale(self, service: str, count: int, env: dict[str, str]) -> None:
        """Start `count` containers of one service."""
        self.run(["up", "-d", "--no-deps", "--force-recreate", "--no-build", "--scale",
                  f"{service}={count}", service], env)

    def down(self, env: dict[str, str]) -> None:
        """Stop and remove the containers and the network; the PostgreSQL volume stays."""
        self.run(["down", "--remove-orphans", "-t", "10"], env, timeout_s=180, check=False)


# -- images ------------------------------------------------------------------------------


def wheelhouse_requirements() -> list[str]:
    """The project's dependencies, every variant's `requires`, and setuptools to install it."""
    with (repo_root() / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    variants = list(discover().values())
    reqs = [*project["dependencies"], *all_requirements(variants), "setuptools>=68"]
    return list(dict.fromkeys(reqs))


def build_wheelhouse(folder: Path | None = None) -> Path:
    """docker/wheelhouse/: wheels of every requirement for this Python, built on the host.

    Kept while the requirements and the host's Python are the same (`.complete` stamp).
    """
    folder = folder or docker_dir() / "wheelhouse"
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(wheelhouse_requirements()) + "\n"
    stamp = f"{sys.version_info.major}.{sys.version_info.minor}\n{text}"
    done = folder / ".complete"
    if done.is_file() and done.read_text() == stamp:
        return folder
    (folder / "requirements.txt").write_text(text)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(folder),
                             "-r", str(folder / "requirements.txt")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DockerError(f"pip wheel failed: {_last_line(result.stderr)}")
    done.write_text(stamp)
    return folder


def choose_base_image(engine: Engine, requested: str | None) -> str:
    """The base image's own base: asked for, else python:3.11-slim, else the offline base
    when only that one is present (so no registry is contacted on a host without one)."""
    if requested:
        return requested
    if os.environ.get("BENCH_BASE_IMAGE"):
        return os.environ["BENCH_BASE_IMAGE"]
    for image in (DEFAULT_BASE, OFFLINE_BASE):
        if engine.run(["image", "inspect", image], 30, check=False).returncode == 0:
            return image
    return DEFAULT_BASE


def check_base_python(engine: Engine, base_image: str) -> None:
    """The wheelhouse is built for the host's Python: the base image must have the same."""
    if engine.run(["image", "inspect", base_image], 30, check=False).returncode != 0:
        pulled = engine.run(["pull", "-q", base_image], 600, check=False)
        if pulled.returncode != 0:
            raise DockerError(f"base image {base_image} is not here and cannot be pulled "
                              f"({_last_line(pulled.stderr)}); without a registry build one "
                              f"with docker/offline-base and pass --base-image {OFFLINE_BASE}")
    found = engine.run(["run", "--rm", "--network", "none", base_image, "python3", "-c",
                        "import sys; print('%d.%d' % sys.version_info[:2])"], 120, check=False)
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    have = found.stdout.strip()
    if found.returncode != 0:
        raise DockerError(f"base image {base_image} has no python3: "
                          f"{_last_line(found.stderr)}")
    if have != want:
        raise DockerError(f"base image {base_image} has Python {have}, the wheelhouse is built "
                          f"by Python {want}: run the harness with Python {have}, or pick a "
                          f"base image with Python {want}")


def build_images(compose: Compose, env: dict[str, str], variants: list[str]) -> None:
    """The base image, then each variant's image (cached layers make reruns quick)."""
    compose.run(["build", "base"], env, timeout_s=BUILD_TIMEOUT_S)
    for name in dict.fromkeys(variants):
        compose.run(["build", "server"], {**env, "BENCH_VARIANT": name},
                    timeout_s=BUILD_TIMEOUT_S)


def netem_problem(engine: Engine, image: str = BASE_TAG) -> str | None:
    """None when netem works in a container with NET_ADMIN; else why not (one line)."""
    tc = engine.run(["run", "--rm", "--network", "none", "--cap-add", "NET_ADMIN", image,
                     "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                    120, check=False)
    if tc.returncode == 0:
        return None
    detail = _last_line(tc.stderr or tc.stdout) or f"tc exited {tc.returncode}"
    if "unknown" in detail.lower() or "not found" in detail.lower():
        return f"kernel has no sch_netem (tc in a container: {detail})"
    return f"tc netem failed in a container: {detail}"


def netem_command(latency_ms: int, dev: str = "eth0") -> list[str]:
    """The qdisc inside the server container (its own network namespace)."""
    return netem_qdisc_command(None, dev, latency_ms)


# -- containers --------------------------------------------------------------------------


def container_state(engine: Engine, cid: str) -> dict[str, Any]:
    out = engine.run(["inspect", "--format", "{{json .State}}", cid], 30).stdout
    state: dict[str, Any] = json.loads(out)
    return state


def container_ip(engine: Engine, cid: str) -> str:
    out = engine.run(["inspect", "--format",
                      "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid], 30)
    addresses = out.stdout.split()
    if not addresses:
        raise DockerError(f"container {cid[:12]} has no network address")
    return addresses[0]


def container_logs(engine: Engine, cid: str) -> str:
    result = engine.run(["logs", cid], 60, check=False)
    return result.stdout + result.stderr


def serve_children(main_pid: int) -> list[int]:
    """The server's own processes: the children of `python -m bench serve` (its wrapper,
    like the harness in local mode, is not part of what is measured)."""
    for proc in process_tree(main_pid):
        with contextlib.suppress(Exception):
            if proc.cmdline()[1:4] == ["-m", "bench", "serve"]:  # not docker-init's "--" args
                return [child.pid for child in proc.children()]
    return []


def db_password() -> str:
    """Docker mode's PostgreSQL password: random once, kept 0600 in the cache, given to the
    containers through the environment (never written into an image or a file in git)."""
    folder = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    return stored_secret(folder / "docker-db-password")


def _wait_for(what: str, ready: Any, alive: Any, timeout_s: float, why_dead: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise ServerError(f"{what} exited before it was ready:\n{why_dead()}")
        time.sleep(0.5)
    raise ServerError(f"{what} not ready after {timeout_s:.0f} s:\n{why_dead()}")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- the run -----------------------------------------------------------------------------


class DockerRunner(Runner):
    """Runner whose cells run as containers; plan, measuring loop, files and metrics are
    the runner's: this class only starts and stops what a cell measures."""

    mode = "docker"
    # The backend's reason until prepare() has built the images and probed netem in one.
    PROBE_PENDING = "probed in a container once the images are built"

    def __init__(self, config: RunConfig, base_image: str | None = None) -> None:
        if config.target:
            raise RunError("--docker starts its own containers; --target benchmarks a "
                           "deployment elsewhere: use one or the other")
        if config.pg_bin:
            raise RunError("--pg-bin does not apply with --docker: PostgreSQL runs in the db "
                           "container (the image's pgserver binaries)")
        self.engine = find_engine()
        self.requested_base = base_image
        self.base_image = ""
        self.project = os.environ.get("BENCH_COMPOSE_PROJECT", "asynchronize-django")
        self.password = db_password()
        self.postgres_version: str | None = None
        self._prepared = False
        super().__init__(config)
        # PostgreSQL runs in the db container, not on the host.
        if self.cluster is not None:
            self.cluster.close()
        self.cluster = None
        if config.resume and read_json(self.run_json).get("mode") != "docker":
            raise RunError(f"{config.resume} is a local run; resume it without --docker")
        self.compose = Compose(self.engine, self.project, proxy=self.backend == "proxy")

    # -- preparation ---------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_BASE_IMAGE": self.base_image,
                "BENCH_DB_PASSWORD": self.password}

    def prepare(self) -> None:
        """Wheelhouse, base image and the variants' images, then the latency probe that
        runs in one of them (once per run, at its start: not in the constructor)."""
        if self._prepared:
            return
        t0 = time.monotonic()
        build_wheelhouse()
        self.base_image = choose_base_image(self.engine, self.requested_base)
        check_base_python(self.engine, self.base_image)
        console.print(f"docker: building images on {self.base_image} (engine "
                      f"{self.engine.server_version}, {self.engine.storage_driver})")
        build_images(Compose(self.engine, self.project, proxy=False), self.base_env(),
                     [cell.variant.name for cell in self.cells])
        console.print(f"docker: images ready in {time.monotonic() - t0:.0f} s")
        if self.backend_reason == self.PROBE_PENDING:
            self.backend, self.backend_reason = self._probe_latency()
            self.compose = Compose(self.engine, self.project, proxy=self.backend == "proxy")
        self._prepared = True

    def _find_pgbouncer(self) -> tuple[Path | None, str | None]:
        """The images hold no PgBouncer: variants that declare one are skipped (run.json
        "skipped", the report's caveats), the rest of the run goes on."""
        if any(v.pgbouncer for v in self.variants):
            return None, ("Docker mode does not provide PgBouncer (docker/compose.yaml has "
                          "no pgbouncer service); run it locally")
        return None, None

    def _resolve_latency(self) -> tuple[str, str]:
        """What can be known without images; auto and netem wait for prepare()."""
        requested = self.config.latency_backend
        if requested == "none":
            return "none", "no latency injected (--latency-backend none)"
        if requested == "proxy":
            return "proxy", "requested (--latency-backend proxy): proxy sidecar container"
        if requested not in ("auto", "netem"):
            raise RunError(f"unknown latency backend {requested!r}")
        return requested, self.PROBE_PENDING

    def _probe_latency(self) -> tuple[str, str]:
        requested = self.config.latency_backend
        problem = netem_problem(self.engine)
        if requested == "netem":
            if problem:
                raise RunError(f"netem cannot run in containers here: {problem}; use "
                               "--latency-backend proxy (or auto)")
            return "netem", "requested (--latency-backend netem): tc in the server container"
        if problem:
            return "proxy", f"netem unavailable: {problem}; proxy sidecar container"
        return "netem", "auto: netem works in containers here (tc in the server container)"

    def run(self) -> int:
        self.prepare()
        self.compose.down(self.base_env())  # leftovers of a killed run
        try:
            return super().run()
        finally:
            self.compose.down(self.base_env())

    def run_metadata(self, status: str, started: str, ended: str | None) -> dict[str, Any]:
        data = super().run_metadata(status, started, ended)
        data["mode"] = "docker"
        data["postgres_version"] = self.postgres_version
        data["docker"] = {
            "engine": self.engine.server_version,
            "storage_driver": self.engine.storage_driver,
            "compose": [*self.engine.compose[-1:], self.engine.compose_version],
            "base_image": self.base_image or None,
            "images": self._image_ids(),
            "project": self.project,
        }
        data["caveats"] = [*data["caveats"],
                           "Docker mode: server, PostgreSQL and Locust in containers on one "
                           "host, talking over a Docker bridge network"]
        return data

    def _image_ids(self) -> dict[str, str]:
        ids = {}
        for tag in [BASE_TAG, *dict.fromkeys(image_tag(c.variant.name) for c in self.cells)]:
            found = self.engine.run(["image", "inspect", "--format", "{{.Id}}", tag], 30,
                                    check=False)
            if found.returncode == 0:
                ids[tag] = found.stdout.strip()
        return ids

    # -- one cell ------------------------------------------------------------------------

    def cell_env(self, cell: Cell, cell_dir: Path) -> dict[str, str]:
        server_env = cell_dir.parent.parent / ".docker" / "server.env"
        server_env.parent.mkdir(parents=True, exist_ok=True)
        app = cell.variant.app_env()
        server_env.write_text("".join(f"{k}={app[k]}\n" for k in ("DB_POOL", "DB_CONN_MAX_AGE")))
        front = ("latency", self.front_port(cell)) if self.backend == "proxy" \
            else ("server", SERVER_PORT)
        # At 0 ms the proxies stay out of the path (bench/latency/proxy.py): the server,
        # still in the sidecar's network namespace, dials db directly.
        direct_db = ({"BENCH_PROXY_DB_HOST": "db", "BENCH_PROXY_DB_PORT": "5432"}
                     if self.backend == "proxy" and not proxied(cell.latency_ms) else {})
        return {
            **direct_db,
            **self.base_env(),
            "BENCH_VARIANT": cell.variant.name,
            "BENCH_PG_MAX_CONNECTIONS": str(cell.variant.max_connections),
            "BENCH_ROWS": str(self.template_rows),
            "BENCH_DB_NAME": DB_NAME,
            "BENCH_CPU_LOOP": str(self.cpu_loop),
            "BENCH_CPU_MS": str(self.cpu_ms or 0),
            "BENCH_SERVER_ENV_FILE": str(server_env.resolve()),
            "BENCH_SERVER_CPUS": ",".join(map(str, self.place["server_cpus"])),
            "BENCH_OTHER_CPUS": ",".join(map(str, self.place["other_cpus"])),
            "BENCH_LATENCY_MS": str(cell.latency_ms),
            "BENCH_TARGET_URL": f"http://{front[0]}:{front[1]}",
            "BENCH_ROUTE": cell.route,
            "BENCH_PROFILE": self.profile.name,
            "BENCH_LOAD_PROCESSES": str(self.config.load_processes),
            "BENCH_LOAD_WORKERS": str(self.config.load_workers or 0),
            "BENCH_CELL_DIR": str(cell_dir.resolve()),
            "BENCH_UID": str(os.getuid()),
            "BENCH_GID": str(os.getgid()),
        }

    def front_port(self, cell: Cell) -> int:
        """The port clients dial on the latency sidecar: its proxy, or at 0 ms the server
        itself (the sidecar owns the server's network namespace)."""
        return PROXY_PORT if proxied(cell.latency_ms) else SERVER_PORT

    def open_deployment(self, cell: Cell, cell_dir: Path, stack: contextlib.ExitStack,
                        phases: _Phases) -> Deployment:
        """db, the latency sidecar (proxy) and the server as containers, listening; the
        runner's own loop verifies, loads and measures them."""
        env = self.cell_env(cell, cell_dir)
        engine = self.engine
        stack.callback(self.compose.down, env)
        db = self.compose.up("db", env)
        self._wait_db(db)
        phases.mark("postgres")
        front = self.compose.up("latency", env) if self.backend == "proxy" else None
        server = self.compose.up("server", env)
        stack.callback(self._save_log, server, cell_dir / "server.log")
        if self.backend == "netem" and cell.latency_ms > 0:
            engine.run(["exec", server, *netem_command(cell.latency_ms)], 60)
        phases.mark("latency")
        host = container_ip(engine, front or server)
        port = self.front_port(cell) if front else SERVER_PORT
        _wait_for("server container", lambda: is_listening(host, port, 1.0),
                  lambda: bool(container_state(engine, server).get("Running")),
                  SERVER_READY_TIMEOUT_S, lambda: _tail(container_logs(engine, server)))
        # The proxy accepts before the server listens: wait for the server itself too.
        _wait_for("server", lambda: "serving at" in container_logs(engine, server),
                  lambda: bool(container_state(engine, server).get("Running")),
                  SERVER_READY_TIMEOUT_S, lambda: _tail(container_logs(engine, server)))
        phases.mark("server_start")
        return DockerDeployment(
            engine, f"http://{host}:{port}", DB_USER, server, db,
            serve_children(int(container_state(engine, server)["Pid"])),
            int(container_state(engine, db)["Pid"]))

    def launch_load(self, cell: Cell, cell_dir: Path, deployment: Deployment
                    ) -> LoadRun | None:
        return None  # the load container starts its test as it starts (DockerLoad.start)

    def start_load(self, cell: Cell, cell_dir: Path, deployment: Deployment) -> LoadRun:
        env = self.cell_env(cell, cell_dir)
        if self.config.load_workers:
            # The same master/worker path as across hosts; compose.down removes them.
            self.compose.scale("load-worker", self.config.load_workers, env)
        load = DockerLoad(self.engine, self.compose, env, cell_dir)
        load.start()
        return load

    def _wait_db(self, db: str) -> None:
        def logs() -> str:
            return container_logs(self.engine, db)

        def ready() -> bool:
            text = logs()
            if "database ready" not in text:
                return False
            version = text.split("(PostgreSQL ", 1)[-1].split(",", 1)[0]
            self.postgres_version = version or self.postgres_version
            return True

        _wait_for("db container", ready,
                  lambda: bool(container_state(self.engine, db).get("Running")),
                  DB_READY_TIMEOUT_S, lambda: _tail(logs()))

    def _save_log(self, cid: str, path: Path) -> None:
        with contextlib.suppress(DockerError, OSError):
            path.write_text(container_logs(self.engine, cid))


class DockerDeployment:
    """A cell's db and server containers, seen by the runner's measuring loop."""

    def __init__(self, engine: Engine, url: str, db_user: str, server: str, db: str,
                 server_pids: list[int], db_pid: int) -> None:
        self.engine = engine
        self.url = url
        self.db_user = db_user
        self.pooler: PgBouncer | None = None  # Docker mode provides no PgBouncer
        self.server = server
        self.db = db
        self._server_pids = server_pids
        self._db_pid = db_pid

    def server_pids(self) -> list[int]:
        return self._server_pids

    def db_pids(self) -> list[int]:
        return [self._db_pid]

    def helper_pids(self) -> list[int]:
        return []

    def crashed(self) -> str | None:
        state = container_state(self.engine, self.server)
        if not state.get("Running"):
            return (f"server exited with code {state.get('ExitCode')} during the load:\n"
                    f"{_tail(container_logs(self.engine, self.server), 8)}")
        if not container_state(self.engine, self.db).get("Running"):
            return ("PostgreSQL exited during the load: "
                    f"{_tail(container_logs(self.engine, self.db), 3)}")
        return None


class DockerLoad:
    """Locust in the `load` container (`python -m bench load`), writing into the cell's
    folder: its live request logs are in <cell>/.locust, where the stop file goes too."""

    def __init__(self, engine: Engine, compose: Compose, env: dict[str, str],
                 cell_dir: Path) -> None:
        self.engine = engine
        self.compose = compose
        self.env = env
        self.cell_dir = cell_dir
        self.started_at: float | None = None
        self.cid: str | None = None
        self._pid = 0

    @property
    def live_dir(self) -> Path:
        return self.cell_dir / ".locust"

    def start(self) -> None:
        """Start the container and return once Locust's test has started (its start.<pid>
        marker), so the runner's hold never counts the container's creation (~10 s on vfs)
        as load: a stop file touched before Locust starts would end the test at once."""
        shutil.rmtree(self.live_dir, ignore_errors=True)  # a killed attempt's markers
        self.cid = self.compose.up("load", self.env)
        self._pid = int(container_state(self.engine, self.cid).get("Pid") or 0)
        self.started_at = time.time()
        deadline = time.monotonic() + LOAD_START_TIMEOUT_S
        while not any(self.live_dir.glob("start.*")) and time.monotonic() < deadline:
            if not container_state(self.engine, self.cid).get("Running"):
                return  # the runner's hold reports its exit code
            time.sleep(0.2)
        self.started_at = time.time()

    def pids(self) -> list[int]:
        return [self._pid] if self._pid else []

    def request_stop(self) -> None:
        with contextlib.suppress(OSError):
            (self.live_dir / "stop").touch()

    def wait(self, timeout: float | None = None) -> int:
        """The container's exit code once it has ended; TimeoutError if it still runs
        after `timeout` s. `docker wait` blocks until the exit, so the engine is asked
        once a wait, not every half second while Locust measures."""
        state = container_state(self.engine, self.cid) if self.cid else {}
        if not state.get("Running"):
            return int(state.get("ExitCode") or 0)
        try:
            done = subprocess.run([self.engine.docker, "wait", str(self.cid)],
                                  capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TimeoutError("load container still running") from None
        if done.returncode == 0 and done.stdout.strip().lstrip("-").isdigit():
            return int(done.stdout.strip())
        # Gone before `docker wait` saw it end (removed): its last state says how it ended.
        state = container_state(self.engine, self.cid) if self.cid else {}
        return int(state.get("ExitCode") or 0)

    def stop(self) -> None:
        if self.cid:
            self.engine.run(["stop", "-t", "15", self.cid], 60, check=False)

    def failure(self) -> str | None:
        """A master's own reason (a lost load-worker), which `bench load` left in the cell."""
        with contextlib.suppress(OSError):
            return (self.cell_dir / "load_failure.txt").read_text().strip() or None
        return None

    def log_tail(self, lines: int = 8) -> str:
        return _tail(container_logs(self.engine, self.cid), lines) if self.cid else ""
