"""Locust, headless, as a subprocess: profiles from load/profiles.toml, one run per cell.

Locust writes its CSVs under `<cell>/.locust/`; when it has finished they are moved to
their final names (one rename each), and the per-process request logs are merged into
`responses.csv`, so a cell folder never holds a half-written file under a final name.
`processes > 1` uses Locust's own master/worker mode (`--processes N`) on this host.

Across hosts (`MasterLocustRun`, `run_load_worker`) it is the same master/worker mode over
the network: each cell's Locust is a master that waits for N workers, and each load host
runs `python -m bench load-worker`, which starts a Locust worker, lets it take part in one
cell's run, and starts the next one for the next cell. The workers send their request
logs and CPU to the master (load/locustfile.py), which writes them beside a local run's,
so everything downstream reads one shape of files. Written on Locust's own distribution
rather than another engine, so the users, the shape and the stats are the ones a local
run uses; what it does not do is start or copy anything onto the load hosts.
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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.paths import load_dir
from bench.processes import die_with_parent, stop_process
from bench.requestlog import HEADER as RESPONSES_HEADER
from bench.requestlog import read_request_log
from bench.results import write_csv_atomic

USER_CLASSES = {"cpu": "CpuUser", "io_read": "IoReadUser", "io_create": "IoCreateUser"}
# key: (type, required)
PROFILE_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "description": (str, False), "users": (int, True), "spawn_rate": ((int, float), True),
    "min_hold_s": ((int, float), True), "max_hold_s": ((int, float), True),
    "precision": ((int, float), True), "timeout_s": ((int, float), True),
    "cpu_ms": ((int, float), False), "cpu_users": (int, False),
    "cpu_spawn_rate": ((int, float), False), "io_read_users": (int, False),
    "io_read_spawn_rate": ((int, float), False)}
# The routes whose users and spawn rate a profile may set apart (Profile.for_route): the
# fields holding them.
ROUTE_SHAPES = {"cpu": ("cpu_users", "cpu_spawn_rate"),
                "io_read": ("io_read_users", "io_read_spawn_rate")}
LOCUST_FILES = {"stats.csv": "locust_stats.csv", "stats_history.csv": "locust_stats_history.csv",
                "failures.csv": "locust_failures.csv", "exceptions.csv": "locust_exceptions.csv"}
WORKERS_HEADER = ("unix_s", "worker", "address", "cpu_pct", "rows")
# Locust's shape is polled once a second: the run's own end is the stop file's backstop.
SHAPE_MARGIN_S = 3.0


# Locust's defaults: a master binds every address, port 5557.
MASTER_BIND = "0.0.0.0"  # noqa: S104 - workers on other hosts must reach it
MASTER_PORT = 5557
WORKER_WAIT_S = 60.0  # how long a cell's master waits for its workers
MASTER_STOP_S = 7.0  # for its shape to see the stop file (1 s) and the last rows (<= 5 s)
REJOIN_DELAY_S = 3.0  # between a worker's run and the next (run_load_worker)
LOCUST_ENV = ("BENCH_PROFILE", "BENCH_RESPONSES_DIR", "BENCH_STOP_FILE", "BENCH_GO_FILE")


class LoadError(Exception):
    """A bad profile or a load generator that cannot run; one line for the user."""


@dataclass(frozen=True)
class Profile:
    """A load shape: ramp to `users`, hold between min_hold_s and max_hold_s (see
    load/profiles.toml); `precision` 0 holds the full max_hold_s."""

    name: str
    users: int  # held after the ramp
    spawn_rate: float  # users started per second
    min_hold_s: float  # the steady window must be at least this long to stop on precision
    max_hold_s: float  # seconds after the ramp at which the load stops in any case
    precision: float  # 95% CI half-width / mean that stops the load (0: never early)
    timeout_s: float  # a slower request fails as "timeout"
    description: str = ""
    cpu_ms: float | None = None  # what a cpu/ request costs (None: the study's 10^7 loop)
    cpu_users: int | None = None  # users on the cpu/ route (None: `users`); see for_route
    cpu_spawn_rate: float | None = None  # their spawn rate (None: `spawn_rate`)
    io_read_users: int | None = None  # users on the io_read/ route (None: `users`)
    io_read_spawn_rate: float | None = None  # their spawn rate (None: `spawn_rate`)

    @property
    def ramp_s(self) -> float:
        return self.users / self.spawn_rate

    @property
    def max_duration_s(self) -> float:
        return self.ramp_s + self.max_hold_s

    def for_route(self, route: str) -> Profile:
        """The shape a cell of `route` runs: on cpu/, `cpu_users` users started at
        `cpu_spawn_rate`, on io_read/ `io_read_users` at `io_read_spawn_rate`, where the
        profile has them.

        A saturated server answers N users in N / throughput seconds (Little's law): 200
        users of a 0.67-s request wait 134 s for an answer wherever the server takes them
        in turns (threads, or an event loop), so a 14-s hold saw no request end. A few
        users keep the server as busy, and are answered within seconds. Started together,
        they stay in step (each answer came in a burst of N, every N x 0.67 s), so they
        are started one request's cost apart; that breaks the step for threads, while an
        event loop still answers the requests of one round at once.

        io_read/ costs PostgreSQL 60-110 ms (a count over the table): 200 users wait 13-21 s
        for an answer. A server that passes them all to PostgreSQL at once (no pool) shares
        its core between 200 queries, so none ends for about 10 s, and then they end in
        waves a turn apart: in the default run those cells never settled in a 14-s hold,
        and read 3.7-7.6 sRPS against 8.6-11.3 with 50 users."""
        fields = ROUTE_SHAPES.get(route)
        if fields is None:
            return self
        users, spawn_rate = (getattr(self, field) for field in fields)
        shaped = self
        if users is not None:
            shaped = replace(shaped, users=users)
        if spawn_rate is not None:
            shaped = replace(shaped, spawn_rate=spawn_rate)
        return shaped

    def with_precision(self, precision: float | None) -> Profile:
        return self if precision is None else replace(self, precision=precision)


def profiles_file() -> Path:
    return load_dir() / "profiles.toml"


def _read_profiles() -> dict[str, dict[str, object]]:
    path = profiles_file()
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise LoadError(f"{path}: {exc}") from None


def available_profiles() -> list[str]:
    return sorted(_read_profiles())


def parse_profile(name: str, table: object, where: str = "profiles.toml") -> Profile:
    if not isinstance(table, dict):
        raise LoadError(f"{where}: [{name}] must be a table")
    for key in table:
        if key not in PROFILE_KEYS:
            raise LoadError(f"{where}: [{name}] unknown key {key!r} "
                            f"(valid: {', '.join(PROFILE_KEYS)})")
    values: dict[str, object] = {}
    for key, (kind, required) in PROFILE_KEYS.items():
        if key == "description":
            values[key] = str(table.get(key, ""))
            continue
        if key not in table:
            if required:
                raise LoadError(f"{where}: [{name}] key {key!r} is missing")
            continue
        value = table[key]
        may_be_zero = key == "precision"
        if isinstance(value, bool) or not isinstance(value, kind) or not isinstance(
                value, int | float) or value < 0 or (value == 0 and not may_be_zero):
            raise LoadError(f"{where}: [{name}] key {key!r} must be a positive number, "
                            f"not {value!r}")
        values[key] = value
    profile = Profile(name=name, **values)  # type: ignore[arg-type]
    if profile.min_hold_s > profile.max_hold_s:
        raise LoadError(f"{where}: [{name}] min_hold_s ({profile.min_hold_s}) must be at most "
                        f"max_hold_s ({profile.max_hold_s})")
    if profile.precision >= 1:
        raise LoadError(f"{where}: [{name}] precision is a fraction of the mean (0.05 = 5%), "
                        f"below 1, not {profile.precision!r}")
    return profile


def load_profile(name: str) -> Profile:
    profiles = _read_profiles()
    if name not in profiles:
        raise LoadError(f"unknown profile {name!r} (valid: {', '.join(sorted(profiles))})")
    return parse_profile(name, profiles[name], str(profiles_file()))


class LocustRun:
    """One headless Locust run against `url` on one route."""

    def __init__(self, url: str, route: str, profile: Profile, out_dir: Path,
                 processes: int = 1, cpu_affinity: list[int] | None = None) -> None:
        if route not in USER_CLASSES:
            raise LoadError(f"unknown route {route!r} (valid: {', '.join(USER_CLASSES)})")
        self.url = url
        self.route = route
        self.profile = profile.for_route(route)
        self.out_dir = out_dir
        self.work_dir = out_dir / ".locust"
        self.processes = processes
        self.cpu_affinity = cpu_affinity
        self._proc: subprocess.Popen[bytes] | None = None
        self._finished = False
        self._gated = False
        self.started_at: float | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "locust", "-f", str(load_dir() / "locustfile.py"),
               "--headless", "--host", self.url, "--csv", str(self.work_dir / "locust"),
               "--csv-full-history", "--only-summary", "--loglevel", "WARNING",
               "--exit-code-on-error", "0", "--stop-timeout", "0"]
        if self.processes > 1:
            cmd += ["--processes", str(self.processes)]
        return [*cmd, USER_CLASSES[self.route]]

    def profile_json(self) -> str:
        return json.dumps({
            "users": self.profile.users, "spawn_rate": self.profile.spawn_rate,
            "timeout_s": self.profile.timeout_s,
            "duration_s": self.profile.max_duration_s + SHAPE_MARGIN_S})

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BENCH_PROFILE"] = self.profile_json()
        env["BENCH_RESPONSES_DIR"] = str(self.work_dir)
        env["BENCH_STOP_FILE"] = str(self.stop_file)
        if self._gated:
            env["BENCH_GO_FILE"] = str(self.go_file)
        return env

    @property
    def stop_file(self) -> Path:
        return self.work_dir / "stop"

    @property
    def go_file(self) -> Path:
        return self.work_dir / "go"

    @property
    def live_dir(self) -> Path:
        """Where the request logs grow while Locust runs (bench/requestlog.py reads them)."""
        return self.work_dir

    def request_stop(self) -> None:
        """Ask Locust to end its test now (its shape sees the file within a second)."""
        self.stop_file.touch()

    @property
    def can_launch_early(self) -> bool:
        """Whether launch() can hold this run at the gate: one local Locust process (a
        master waits for its workers anyway; --processes forks them before the gate)."""
        return self.processes == 1

    def launch(self) -> None:
        """Start Locust now but hold its test until start(): it imports (about 1.1 s on
        these machines) while the harness verifies the server, instead of after."""
        if not self.can_launch_early:
            return
        self._gated = True
        self._spawn()

    def start(self) -> None:
        """Start the test: open the gate of a launched run, or launch one now."""
        if self._gated and self._proc is not None:
            self.started_at = time.time()
            self.go_file.touch()
            return
        self._spawn()

    def _spawn(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        self.started_at = time.time()
        log = (self.work_dir / "locust.log").open("wb")
        self._proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        if self.cpu_affinity:
            # Set before Locust has imported anything, so forked workers inherit it.
            with contextlib.suppress(ProcessLookupError, OSError):
                os.sched_setaffinity(self._proc.pid, self.cpu_affinity)

    def pids(self) -> list[int]:
        proc = self._proc
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for Locust to end; raises TimeoutError if it is still running."""
        if self._proc is None:
            raise LoadError("Locust was not started")
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("Locust still running") from None
        self._finish()
        return code

    def stop(self) -> None:
        """Stop Locust (and its workers) now; keeps what it wrote. A run still at its gate
        (the server failed verification) ran no test: it leaves nothing."""
        if self._proc is not None:
            stop_process(self._proc, 8)
        if self._gated and not self.go_file.exists():
            self._finished = True
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._finish()

    def failure(self) -> str | None:
        """Why the load failed, as its Locust wrote it (a lost worker), or None."""
        for path in (self.work_dir / "failure", self.out_dir / "load_failure.txt"):
            with contextlib.suppress(OSError):
                return path.read_text().strip() or None
        return None

    def log_tail(self, lines: int = 8) -> str:
        for path in (self.work_dir / "locust.log", self.out_dir / "locust.log"):
            with contextlib.suppress(OSError):
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _finish(self) -> None:
        """Move Locust's files to their final names and merge the request logs, with times
        made relative to the load's start (responses.csv)."""
        if self._finished or not self.work_dir.is_dir():
            return
        self._finished = True
        for final, written in LOCUST_FILES.items():
            src = self.work_dir / written
            if src.is_file():
                os.replace(src, self.out_dir / final)
        log = read_request_log(self.work_dir, fallback_start=self.started_at)
        write_csv_atomic(self.out_dir / "responses.csv", RESPONSES_HEADER, log.rows())
        for written, final in (("locust.log", "locust.log"), ("failure", "load_failure.txt")):
            if (self.work_dir / written).is_file():
                os.replace(self.work_dir / written, self.out_dir / final)
        workers = self.work_dir / "workers.csv"
        if workers.is_file():
            rows = [line.split(",") for line in workers.read_text().splitlines() if line]
            write_csv_atomic(self.out_dir / "load_workers.csv", WORKERS_HEADER, rows)
        shutil.rmtree(self.work_dir, ignore_errors=True)


class MasterLocustRun(LocustRun):
    """One cell's Locust as a master on this host: it waits up to `wait_s` for `workers`
    Locust workers (`python -m bench load-worker` on the load hosts), then runs the test
    through them; the workers' request logs and CPU come back to it."""

    def __init__(self, url: str, route: str, profile: Profile, out_dir: Path, workers: int,
                 bind: str = MASTER_BIND, port: int = MASTER_PORT,
                 wait_s: float = WORKER_WAIT_S, cpu_affinity: list[int] | None = None) -> None:
        super().__init__(url, route, profile, out_dir, cpu_affinity=cpu_affinity)
        self.workers = workers
        self.bind = bind
        self.port = port
        self.wait_s = wait_s

    @property
    def can_launch_early(self) -> bool:
        return False  # it waits for its workers before its test in any case

    def command(self) -> list[str]:
        cmd = super().command()
        user_class = cmd.pop()
        return [*cmd, "--master", "--master-bind-host", self.bind,
                "--master-bind-port", str(self.port), "--expect-workers", str(self.workers),
                "--expect-workers-max-wait", str(int(self.wait_s)),
                "--bench-profile", self.profile_json(), user_class]

    def stop(self) -> None:
        """End the test through the stop file first: the master then tells its workers to
        quit. Killed by a signal it does not, and they would keep loading the server until
        they miss its heartbeat (60 s)."""
        proc = self._proc
        # Before the test has started (still waiting for workers) there is nothing to end.
        if proc is not None and proc.poll() is None and any(self.work_dir.glob("start.*")):
            self.request_stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=MASTER_STOP_S)
        super().stop()

    def failure(self) -> str | None:
        reason = super().failure()
        if reason is None and "Gave up waiting for workers" in self.log_tail(40):
            return (f"fewer than {self.workers} load workers joined the master at "
                    f"{self.bind}:{self.port} within {self.wait_s:.0f} s (start `python -m "
                    f"bench load-worker --master HOST:{self.port}` on each load host)")
        return reason


def parse_master(text: str) -> tuple[str, int]:
    """HOST:PORT of a master (--master), or a LoadError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadError(f"--master expects HOST:PORT (e.g. 10.0.0.5:{MASTER_PORT}), "
                        f"got {text!r}")
    return host.strip("[]"), int(port)


def worker_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(load_dir() / "locustfile.py"),
            "--worker", "--master-host", host, "--master-port", str(port),
            "--loglevel", "WARNING"]


def run_load_worker(host: str, port: int, say: Callable[[str], None] = print) -> int:
    """A Locust worker for every run of the master at host:port, one after another: each
    cell is a new Locust run, and a worker leaves when its run ends. Until Ctrl-C (the
    caller turns SIGINT/SIGTERM into KeyboardInterrupt); the worker is stopped with it."""
    env = {k: v for k, v in os.environ.items() if k not in LOCUST_ENV}
    runs = 0
    say(f"load worker: joining the master at {host}:{port} for each cell (Ctrl-C stops)")
    while True:
        proc = subprocess.Popen(worker_command(host, port), env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:
                stop_process(proc, 5)
        runs += 1
        say(f"load worker: Locust run {runs} ended (exit code {code}); waiting for the "
            f"next cell's master at {host}:{port}")
        # Long enough for the master that ended this run to be gone (about 1 s), so the
        # next worker rarely greets a master on its way out; one that does is acknowledged
        # and then left without a test, and quits after 10 s without an answer (the
        # locustfile's _MasterWatch; Locust's own worker waits 60 s, or for ever before a
        # first answer). The next cell's master starts seconds later, after its database
        # and server.
        time.sleep(REJOIN_DELAY_S)
