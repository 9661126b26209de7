"""A run: every cell of variant x route x latency x repeat.

The runner only composes: variants (data), PostgreSQL, latency, server, verification,
Locust, the resource sampler, metrics. Each cell starts from a fresh database clone and
leaves nothing running; finished cells survive a crash or Ctrl-C, and --resume skips them.

Repeats are interleaved: every cell of repeat 1 in a shuffled order, then every cell of
repeat 2 in another, ... (the seed is in run.json), so the drift of a shared machine spreads
over every column instead of biasing one. Each cell's load holds until its steady sRPS is
precise enough (bench/steady.py) or its profile's maximum hold has passed.

A variant that declares `[pgbouncer]` gets its own PgBouncer per cell, between the server
and PostgreSQL (bench/pgbouncer.py). Where no pgbouncer program can be had (or in Docker
mode, which does not provide one), its columns are skipped: listed with the reason in
run.json ("skipped") and the report's caveats, while the rest of the run goes on. So is a
sweep combination that cannot run (`--conn-max-age 60` over Django's pool).

Deployment hooks: `open_deployment` starts what a cell measures (locally: latency,
PostgreSQL, PgBouncer, the server; with --target nothing: a deployment elsewhere, known by
its URL and optionally its PostgreSQL's DSN), `launch_load` the load generator held at
its gate while the server is verified (one local Locust process; None otherwise) and
`start_load` the load generator (Locust here, or a master for Locust workers on other
hosts with --load-workers) where nothing was launched; Docker mode
(bench/docker.py) supplies its own, and the measuring loop (`_measure`) is shared.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from bench import metadata
from bench.latency import LatencySession, open_latency, resolve_backend
from bench.load import (
    MASTER_BIND,
    MASTER_PORT,
    WORKER_WAIT_S,
    LocustRun,
    MasterLocustRun,
    Profile,
    load_profile,
)
from bench.machine import (
    CELL_CALIBRATION_TIMES,
    STUDY_CPU_LOOP,
    Calibration,
    calibrate,
    cpu_work_text,
)
from bench.metrics import cell_metrics
from bench.paths import results_dir
from bench.pgbouncer import PgBouncer, PgBouncerError, find_binary, program_version
from bench.postgres import ConnectionMonitor, PostgresCluster
from bench.processes import process_tree
from bench.record import FORMAT, CellRecord, RecordError, read_cell
from bench.requestlog import RequestLog
from bench.resources import ResourceSampler
from bench.results import read_json, write_csv_atomic, write_json_atomic
from bench.server import ServerError, ServerProcess, app_environment
from bench.signals import Interrupted, signals_interrupt
from bench.steady import BIN_S, analyse
from bench.variants import Variant, VariantError, discover, select
from bench.verify import ROUTES, VerificationError, verify_routes

# soft_wrap: a log that is not a terminal gets whole lines, not lines cut at 80 columns.
console = Console(stderr=True, highlight=False, soft_wrap=True)
# After the load the server's queued work is worthless: a server busy with queued cpu/
# requests (or hundreds of slow ones at 200 ms) would take its whole graceful timeout.
# SIGTERM, this long to exit, then SIGKILL to its process group.
SERVER_STOP_GRACE_S = 1.0
POLL_S = 1.0  # how often the steady state is judged while the load runs
# A server this busy (% of a core, mean over the window) was reached by the load.
BUSY_SERVER_PCT = 50.0
LOG_MARGIN_S = 0.5  # responses ending this close to "now" may not be logged yet
PRECISE_LOOKS = 2  # consecutive looks that must find the interval tight enough
RESUME_ANY = ("master_bind", "master_port")  # may differ when a run is resumed


class RunError(Exception):
    """A run that cannot start or resume; one line for the user."""


@dataclass
class RunConfig:
    variants: list[str] | None = None
    routes: list[str] = field(default_factory=lambda: list(ROUTES))
    latencies_ms: list[int] = field(default_factory=lambda: [0, 100, 200])
    profile: str = "quick"
    repeats: int = 1
    latency_backend: str = "auto"
    out: Path | None = None
    resume: Path | None = None
    load_processes: int = 1
    load_workers: int | None = None  # None: Locust on this host; N: a master waiting for N
    master_bind: str = MASTER_BIND
    master_port: int = MASTER_PORT
    target: str | None = None
    target_name: str | None = None  # the column of a --target run
    target_db: str | None = None  # DSN of the target's PostgreSQL (pg_stat_activity)
    pg_bin: Path | None = None
    pg_max_connections: list[int] | None = None
    pool_sizes: list[int] | None = None
    conn_max_ages: list[int] | None = None
    pgbouncer_bin: Path | None = None
    cpu_loop: int | None = None  # a fixed cpu/ loop; None: cpu_ms, else the study's loop
    cpu_ms: float | None = None  # CPU time a cpu/ request; None: the profile's cpu_ms
    precision: float | None = None  # None: the profile's
    seed: int | None = None  # None: a random one, recorded
    rows: int = 1_000_000

    def comparable(self) -> dict[str, Any]:
        """What must match for --resume to continue a run."""
        data = asdict(self)
        for key in ("out", "resume", "pg_bin", "pgbouncer_bin"):
            data.pop(key)
        return data


@dataclass(frozen=True)
class Cell:
    column: str
    variant: Variant
    route: str
    latency_ms: int
    repeat: int

    @property
    def cell_id(self) -> str:
        return f"{self.column}__{self.route}__{self.latency_ms}ms__r{self.repeat}"


def sweep_columns(variant: Variant, config: RunConfig
                  ) -> tuple[list[tuple[str, Variant]], dict[str, str]]:
    """The variant, or one column per connection-settings combination of the sweep; and
    the combinations that cannot run, each with the reason (column name -> reason)."""
    pg_values: list[int | None] = [*config.pg_max_connections] if config.pg_max_connections \
        else [None]
    pool_values: list[int | None] = [*config.pool_sizes] if config.pool_sizes and variant.pool \
        else [None]
    age_values: list[int | None] = [*config.conn_max_ages] if config.conn_max_ages else [None]
    columns, skipped = [], {}
    for pg in pg_values:
        for pool in pool_values:
            for age in age_values:
                name = variant.name + (f"+pg{pg}" if pg is not None else "") + (
                    f"+pool{pool}" if pool is not None else "") + (
                    f"+cma{age}" if age is not None else "")
                try:
                    columns.append((name, variant.with_overrides(pg, pool, age)))
                except VariantError as exc:
                    skipped[name] = str(exc)
    return columns, skipped


def plan_columns(config: RunConfig, variants: list[Variant], pgbouncer_problem: str | None
                 ) -> tuple[list[tuple[str, Variant]], dict[str, str]]:
    """Every column of the run, and those skipped with the reason (column -> reason).

    `pgbouncer_problem`: why no PgBouncer can be started (None: one can), which skips the
    columns of variants that declare [pgbouncer].
    """
    columns: list[tuple[str, Variant]] = []
    skipped: dict[str, str] = {}
    for variant in variants:
        runnable, impossible = sweep_columns(variant, config)
        skipped.update(impossible)
        for name, configured in runnable:
            if configured.pgbouncer is not None and pgbouncer_problem:
                skipped[name] = f"{variant.name} needs PgBouncer: {pgbouncer_problem}"
            else:
                columns.append((name, configured))
    return columns, skipped


def plan_cells(config: RunConfig, variants: list[Variant], seed: int,
               pgbouncer_problem: str | None = None) -> list[Cell]:
    """Every cell, repeat by repeat, each repeat in its own shuffled order; a repeat never
    starts with the cell the previous one ended with (no cell runs back to back)."""
    rng = random.Random(seed)
    cells: list[Cell] = []
    columns = plan_columns(config, variants, pgbouncer_problem)[0]
    for repeat in range(1, config.repeats + 1):
        block = [Cell(column, configured, route, latency, repeat)
                 for column, configured in columns
                 for route in config.routes for latency in config.latencies_ms]
        rng.shuffle(block)
        if cells and len(block) > 1 and _same_group(block[0], cells[-1]):
            block[0], block[1] = block[1], block[0]
        cells += block
    return cells


def _same_group(a: Cell, b: Cell) -> bool:
    return (a.column, a.route, a.latency_ms) == (b.column, b.route, b.latency_ms)


def placement() -> dict[str, list[int]]:
    """The server on its own core, PostgreSQL and Locust on the rest (with >= 2 cores), the
    latency proxies on the server's core, as real-time tasks (bench/latency/delay_proxy.py).

    Measured on sync_gunicorn io_create/ 0 ms, steady sRPS through the proxy over none
    (benchmarks/proxy_overhead.py --end-to-end, 3 repeats each, one quiet 2-core machine):
    free on any core 0.79; real-time on any core 0.90; on the server's core alone 0.90;
    real-time on the server's core 0.93 (9 repeats, 0.82-1.02). Request by request (the
    design of proxy_overhead.py --requests, 300 pairs, two runs each), the time a request
    gained through the proxies: real-time on the server's core +7.1% and +7.9%; the normal
    scheduler there +9.6% and +9.4%; the upstream proxy on the other core +20% and +23%
    (each of its messages then wakes the other virtual CPU). A sync worker idles while
    its query crosses the proxy, so the proxy's core is free when it has work; beside
    PostgreSQL and Locust it waited for them. netem's work runs on the sending core too."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"server_cpus": cpus, "other_cpus": cpus, "latency_cpus": cpus}
    return {"server_cpus": cpus[-1:], "other_cpus": cpus[:-1], "latency_cpus": cpus[-1:]}


def host_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (loopback when it has none)."""
    import psutil

    addresses = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                 if a.family == socket.AF_INET and not a.address.startswith("127.")]
    return addresses or ["127.0.0.1"]


def master_addresses(config: RunConfig) -> list[str]:
    """Where load workers reach the master: --master-bind, or every address of this host
    when it listens on all of them."""
    if config.master_bind in {"0.0.0.0", "*", ""}:  # noqa: S104 - reading the setting
        return host_addresses()
    return [config.master_bind]


def served_address(config: RunConfig) -> str:
    """Where a local server listens for remote load workers: the master's (first) address."""
    return master_addresses(config)[0]


def worker_instructions(config: RunConfig) -> str:
    """Where the load workers should connect, printed when a run starts."""
    port = config.master_port
    where = " or ".join(f"{a}:{port}" for a in master_addresses(config))
    return (f"load: each cell's Locust master waits up to {WORKER_WAIT_S:.0f} s for "
            f"{config.load_workers} worker(s) on {config.master_bind}:{port}; on each load "
            f"host run: python -m bench load-worker --master HOST:{port}  (HOST: {where})")


def empty_load_reason(metrics: Mapping[str, Any]) -> str | None:
    """Why a cell in which no request ended (none in responses.csv) measured nothing, or
    None if it measured something.

    A server that stayed busy meanwhile was reached by the load, and each request took
    longer than the hold: 0 sRPS is the measurement (servers whose threads share one core
    under cpu/ with 200 users, async_daphne's for one). A server that stayed idle, or one
    whose CPU is not measured (--target), never saw the load (a firewall dropping the
    users' packets, for one, so that no request ended within the hold): the cell failed."""
    if metrics.get("total_requests"):
        return None
    cpu = metrics.get("mean_server_cpu_pct")
    if cpu is not None and cpu >= BUSY_SERVER_PCT:
        return None
    busy = "not measured" if cpu is None else f"{cpu:.0f}% of a core"
    return (f"the load ran but no request ended (none in responses.csv) and the server's CPU "
            f"was {busy}: nothing shows the load reached it")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def caveats(backend: str, backend_reason: str, place: dict[str, list[int]],
            config: RunConfig, calibration: Calibration | None) -> list[str]:
    notes = []
    cores = len(os.sched_getaffinity(0))
    if cores <= 4:
        notes.append(f"{cores} cores: the server has {len(place['server_cpus'])} core(s); "
                     "PostgreSQL and Locust share the rest; the latency proxies run on the "
                     "server's core")
    if backend == "proxy":
        from bench.latency import proxy

        at_zero = ("the proxies stay in the path at 0 ms too (BENCH_PROXY_AT_ZERO=1)"
                   if proxy.proxy_at_zero() else "0 ms cells dial directly, as netem's 0 ms "
                   "adds nothing")
        note = ("latency by TCP proxy, not netem: the TCP handshake a proxy cannot delay is "
                "charged to each connection's first message (a client-first protocol, as HTTP "
                f"and PostgreSQL are, sees netem's cost); {at_zero} ({backend_reason})")
        fidelity = getattr(proxy, "FIDELITY_NOTE", "")
        notes.append(f"{note}; {fidelity}" if fidelity else note)
        if not proxy.realtime_permitted():
            notes.append("the latency proxies could not run as real-time tasks (not root): "
                         "at L > 0 each message may also wait for a busy core, on top of L")
    if config.repeats == 1:
        notes.append("one repeat per cell: confidence intervals are batch means within a cell")
    if config.target:
        connections = ("DB connections from its pg_stat_activity (--target-db), over one "
                       "connection held by the harness and not counted") if config.target_db \
            else "nor DB connections (no --target-db)"
        notes.append(f"external target {config.target}: server RSS, CPU and threads and "
                     f"PostgreSQL memory are not measured; {connections}; its latency is its "
                     "network's")
    if calibration is not None and calibration.noisy:
        notes.append(f"noisy machine: the CPU calibration loop varied by "
                     f"{100 * calibration.cv:.1f}% (coefficient of variation) before the run")
    return notes


class Deployment(Protocol):
    """What one cell measures, started: where to send requests and what to watch."""

    url: str
    db_user: str
    pooler: PgBouncer | None

    def server_pids(self) -> list[int]: ...
    def db_pids(self) -> list[int]: ...
    def helper_pids(self) -> list[int]: ...
    def crashed(self) -> str | None: ...


class LoadRun(Protocol):
    """A load generator run (LocustRun locally; a container in Docker mode)."""

    started_at: float | None

    @property
    def live_dir(self) -> Path: ...
    def start(self) -> None: ...
    def pids(self) -> list[int]: ...
    def request_stop(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def stop(self) -> None: ...
    def failure(self) -> str | None: ...
    def log_tail(self, lines: int = 8) -> str: ...


@dataclass
class LocalDeployment:
    url: str
    db_user: str
    server: ServerProcess | None
    cluster: PostgresCluster | None
    session: LatencySession | None
    pooler: PgBouncer | None = None

    def server_pids(self) -> list[int]:
        return self.server.pids() if self.server else []

    def db_pids(self) -> list[int]:
        pid = self.cluster.postmaster_pid if self.cluster else None
        return [pid] if pid else []

    def helper_pids(self) -> list[int]:
        return self.session.pids() if self.session else []

    def crashed(self) -> str | None:
        if self.server is not None:
            code = self.server.exit_code()
            if code is not None:
                return f"server exited with code {code} during the load:\n" \
                       f"{self.server.log_tail(8)}"
        if self.cluster is not None and not self.cluster.running:
            return f"PostgreSQL exited during the load: {self.cluster.log_tail(3)}"
        return self.pooler.crashed() if self.pooler is not None else None


@dataclass
class TargetDeployment:
    """A deployment that runs elsewhere (--target): only its URL, and its PostgreSQL's
    connection count when --target-db names it."""

    url: str
    monitor: ConnectionMonitor | None
    db_user: str = ""
    pooler: PgBouncer | None = None

    def server_pids(self) -> list[int]:
        return []

    def db_pids(self) -> list[int]:
        return []

    def helper_pids(self) -> list[int]:
        return []

    def crashed(self) -> str | None:
        return None  # a remote server that dies shows as failed requests

    def db_connections(self) -> int | None:
        return self.monitor.count() if self.monitor else None


def target_variant(config: RunConfig) -> Variant:
    """The one column of a --target run: a deployment the harness knows only by URL."""
    return Variant(name=config.target_name or "target", folder=Path(),
                   title=f"external target {config.target}", interface="unknown",
                   views="unknown", command=())


class Runner:
    mode = "local"

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.variants = [target_variant(config)] if config.target else select(
            discover(), config.variants)
        self.place = placement()
        self.template_rows = config.rows
        self.out = self._out_dir()
        self.run_json = self.out / "run.json"
        previous = read_json(self.run_json) if config.resume else {}
        if config.seed is None:
            config.seed = (previous.get("config") or {}).get("seed")
            if config.seed is None:
                config.seed = random.SystemRandom().randrange(2**31)
        if config.resume:
            self._check_resume(previous)
        self.profile: Profile = load_profile(config.profile).with_precision(config.precision)
        # Created now so missing PostgreSQL binaries are an error before any cell runs.
        self.cluster: PostgresCluster | None = (
            None if config.target else PostgresCluster(pg_bin=config.pg_bin))
        self.pgbouncer_program, self.pgbouncer_problem = self._find_pgbouncer()
        columns, self.skipped = plan_columns(config, self.variants, self.pgbouncer_problem)
        if not columns:
            raise RunError("nothing to run: every column is skipped ("
                           + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) + ")")
        for name, reason in self.skipped.items():
            console.print(f"[yellow]skipped {name}: {reason}[/]")
        self.cells = plan_cells(config, self.variants, config.seed, self.pgbouncer_problem)
        self.backend, self.backend_reason = self._resolve_latency()
        if self.backend == "none" and any(config.latencies_ms):
            raise RunError("--latency-backend none adds no latency: use --latencies 0, or "
                           "--latency-backend auto|proxy|netem")
        if config.target and any(config.latencies_ms):
            raise RunError("--target adds no latency (the deployment runs elsewhere): use "
                           "--latencies 0 and add latency on its hosts")
        if config.load_workers and self.mode == "local" and not config.target \
                and self.backend != "none":
            raise RunError("with --load-workers the local server must be reachable from the "
                           "load hosts, which the latency backends (on this host only) are "
                           "not: use --latency-backend none --latencies 0, or --target URL")
        self.target_max_connections: int | None = None
        if config.target_db:
            # A wrong DSN is a one-line error now, not a failed first cell.
            with ConnectionMonitor(config.target_db) as monitor:
                self.target_max_connections = monitor.max_connections()
        self.calibration: Calibration | None = None
        self.cpu_loop = STUDY_CPU_LOOP
        self.cpu_ms: float | None = None  # a CPU-time budget a cpu/ request (else the loop)
        self.cpu_work: dict[str, Any] = dict(previous.get("cpu_work") or {})

    def _find_pgbouncer(self) -> tuple[Path | None, str | None]:
        """(the pgbouncer program, None) or (None, why there is none); only looked for when
        a variant declares [pgbouncer] (a --target run starts no component of its own)."""
        if self.config.target or not any(v.pgbouncer for v in self.variants):
            return None, None
        try:
            return find_binary(self.config.pgbouncer_bin), None
        except PgBouncerError as exc:
            return None, str(exc)

    def _resolve_latency(self) -> tuple[str, str]:
        """(backend, why) for this run; Docker mode probes inside its containers instead."""
        if self.config.target:
            return "none", "--target: the deployment runs elsewhere, on its own network"
        backend, why = resolve_backend(self.config.latency_backend)
        if backend == "proxy":  # which program: the C relay where it builds (relay.py)
            from bench.latency import relay

            try:
                chosen = relay.choose()
            except relay.RelayError as exc:
                raise RunError(str(exc)) from None
            program = ("the C relay, bench/latency/delay_relay.c" if chosen.name == "c"
                       else "the Python proxy, bench/latency/delay_proxy.py")
            why = f"{why}; the proxy program: {program} ({chosen.why})"
        return backend, why

    def prepare(self) -> None:
        """Slow work before the first cell, kept out of the constructor (Docker mode: the
        images, then the latency probe that needs them). Nothing to do locally."""

    def _out_dir(self) -> Path:
        if self.config.resume:
            folder = self.config.resume
            if not (folder / "run.json").is_file():
                raise RunError(f"{folder} is not a results folder (no run.json)")
            return folder
        if self.config.out:
            if (self.config.out / "run.json").exists():
                raise RunError(f"{self.config.out} already holds a run; use --resume "
                               f"{self.config.out} or another --out")
            return self.config.out
        return results_dir() / datetime.now().strftime("%Y-%m-%dT%H-%M-%S")

    def _check_resume(self, previous: dict[str, Any]) -> None:
        before = previous.get("config", {})
        mine = _jsonable(self.config.comparable())
        # Settings added since a run was started compare as their defaults; where the
        # master listens does not change what is measured.
        defaults = _jsonable(RunConfig().comparable())
        diff = [k for k, v in mine.items() if k not in RESUME_ANY
                and before.get(k, defaults.get(k)) != v]
        if diff:
            raise RunError(f"cannot resume {self.out}: configuration differs in "
                           f"{', '.join(diff)} (was {before.get(diff[0])!r}, "
                           f"now {mine[diff[0]]!r})")

    def prepare_cpu_work(self) -> None:
        """Calibrate the machine and choose the cpu/ work (once; a resumed run keeps it).

        With a cost in ms (the profile's cpu_ms, or --cpu-ms) each cpu/ request runs for
        that much CPU time (shared_app posts.validation cpu_for). A loop sized from the
        calibration cost what the machine's speed made of it: these machines switch
        between a fast and a slow state for seconds to minutes, and two default runs'
        calibrations (54.4 and 93.3 ms) gave loops of 12.3 and 7.2 million turns, whose
        cpu/ cells then ran 81 and 77 ms a million turns (median): 1.0-1.2 sRPS in one
        run, 1.5-2.2 in the other, for the same 670 ms asked. A fixed loop stays for
        --cpu-loop and the study's profile (the study's 10^7)."""
        self.calibration = calibrate(self.place["server_cpus"])
        if self.cpu_work.get("ms"):
            self.cpu_ms = float(self.cpu_work["ms"])
            return
        if self.cpu_work.get("loop"):
            self.cpu_loop = int(self.cpu_work["loop"])
            return
        target_ms = self.config.cpu_ms or self.profile.cpu_ms
        if self.config.cpu_loop:
            self.cpu_loop, source = self.config.cpu_loop, "--cpu-loop"
        elif self.config.target:
            # The target chose its work when it started; cpu/'s check needs the same. A
            # target started with --cpu-ms answers with its turns, and passes whatever this.
            self.cpu_loop = STUDY_CPU_LOOP
            source = "the target's, assumed to be bench serve's default (else give --cpu-loop)"
        elif target_ms:
            self.cpu_ms = target_ms
            self.cpu_work = {"ms": target_ms, "source": "--cpu-ms" if self.config.cpu_ms
                             else f"profile {self.profile.name}"}
            return
        else:
            self.cpu_loop, source = STUDY_CPU_LOOP, "the study's loop"
        self.cpu_work = {"loop": self.cpu_loop, "source": source,
                         "expected_ms": round(self.calibration.median_ms * self.cpu_loop
                                              / self.calibration.loop, 1)}

    def run_metadata(self, status: str, started: str, ended: str | None) -> dict[str, Any]:
        commit, dirty = metadata.git_state()
        return {
            "format": FORMAT,
            "run_id": self.out.name,
            "started_at": started,
            "ended_at": ended,
            "status": status,
            "config": _jsonable(self.config.comparable()),
            "seed": self.config.seed,
            "profile": asdict(self.profile),
            "latency_backend": self.backend,
            "latency_backend_reason": self.backend_reason,
            "machine": metadata.machine(),
            "machine_calibration": self.calibration.as_json() if self.calibration else None,
            "cpu_work": self.cpu_work,
            "packages": metadata.package_versions(),
            "postgres_version": self.cluster.version if self.cluster else None,
            "pgbouncer_version": (program_version(self.pgbouncer_program)
                                  if self.pgbouncer_program else None),
            "skipped": [{"column": k, "reason": v} for k, v in self.skipped.items()],
            "git_commit": commit,
            "git_dirty": dirty,
            "placement": self.place,
            "caveats": caveats(self.backend, self.backend_reason, self.place, self.config,
                               self.calibration)
            + [f"column {k} skipped: {v}" for k, v in self.skipped.items()],
            "cells": [c.cell_id for c in self.cells],
        }

    def run(self) -> int:
        self.prepare()
        started = now_iso()
        if self.run_json.exists():
            started = read_json(self.run_json).get("started_at", started)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare_cpu_work()
        write_json_atomic(self.run_json, self.run_metadata("running", started, None))
        assert self.calibration is not None
        console.print(f"run: {len(self.cells)} cells -> {self.out} (latency backend: "
                      f"{self.backend}; profile {self.profile.name}; seed {self.config.seed}; "
                      f"calibration {self.calibration.median_ms:.1f} ms "
                      f"± {100 * self.calibration.cv:.1f}%; cpu/ {cpu_work_text(self.cpu_work)})")
        if self.config.load_workers and self.mode == "local":
            console.print(worker_instructions(self.config))
        status = "complete"
        failed = 0
        try:
            with signals_interrupt():
                failed = self._run_cells()
        except Interrupted as exc:
            status = "interrupted"
            console.print(f"[yellow]interrupted ({exc}); finished cells are kept; "
                          f"continue with --resume {self.out}[/]")
        finally:
            # Cleanup must not be cut short by a second Ctrl-C.
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if self.cluster:
                self.cluster.close()
            write_summary(self.out)
            write_json_atomic(self.run_json, self.run_metadata(status, started, now_iso()))
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if status == "interrupted":
            return 130
        return 1 if failed else 0

    def _run_cells(self) -> int:
        failed = 0
        t_start = time.monotonic()
        done_here = 0
        for index, cell in enumerate(self.cells, start=1):
            cell_dir = self.out / "cells" / cell.cell_id
            previous = _finished(cell_dir)
            if previous is not None:
                console.print(f"[{index}/{len(self.cells)}] {cell.cell_id}: kept ({previous})")
                failed += previous == "failed"
                continue
            eta = ""
            if done_here:
                per_cell = (time.monotonic() - t_start) / done_here
                eta = f"  ETA {_minutes(per_cell * (len(self.cells) - index + 1))}"
            console.print(f"[{index}/{len(self.cells)}] {cell.cell_id}{eta}")
            result = self.run_cell(cell, cell_dir, order=index)
            done_here += 1
            failed += result.status == "failed"
            console.print(_cell_line(result))
        return failed

    def _ensure_cluster(self, variant: Variant, listen_host: str) -> PostgresCluster:
        if self.cluster is None:
            self.cluster = PostgresCluster(pg_bin=self.config.pg_bin)
        self.cluster.start(max_connections=variant.max_connections, listen_host=listen_host)
        _pin_tree(self.cluster.postmaster_pid, self.place["other_cpus"])
        return self.cluster

    def run_cell(self, cell: Cell, cell_dir: Path, order: int | None = None) -> CellRecord:
        """Run one cell; always returns (and writes) its cell.json record."""
        _clear_partial(cell_dir)
        started = now_iso()
        t0 = time.monotonic()
        record = CellRecord(
            cell_id=cell.cell_id, column=cell.column, variant=cell.variant.name,
            title=cell.variant.title, study_label=cell.variant.study_label,
            interface=cell.variant.interface, views=cell.variant.views, route=cell.route,
            latency_ms=cell.latency_ms, repeat=cell.repeat,
            settings=self.cell_settings(cell.variant),
            latency_backend=self.backend, placement=self.place, order=order, mode=self.mode,
            precision=self.profile.precision)
        load_s = 0.0
        try:
            if not self.config.target:
                record.machine_loop_ms = calibrate(self.place["server_cpus"],
                                                   times=CELL_CALIBRATION_TIMES).median_ms
            load_s = self._measure(cell, cell_dir, record)
            record.status = "ok" if record.reason is None else "failed"
        except Interrupted:
            record.status = "interrupted"
            record.reason = "the run was interrupted during this cell"
            raise
        except (ServerError, VerificationError) as exc:
            record.reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - any crash fails this cell, not the run
            record.reason = f"{type(exc).__name__}: {exc}"
        finally:
            if not record.metrics:
                record.metrics = _safe_metrics(cell_dir, self.profile.for_route(cell.route))
            workers = record.metrics.get("load_workers")
            if self.config.load_workers or workers:
                record.load_workers = len(workers or [])
            record.not_measured = [*self.not_measured(), *(
                f"load CPU of worker {name}"
                for name in record.metrics.get("load_cpu_not_measured", []))]
            record.started_at = started
            record.ended_at = now_iso()
            record.duration_s = round(time.monotonic() - t0, 2)
            record.overhead_s = round(record.duration_s - load_s, 2)
            record.write(cell_dir / "cell.json")
        return record

    def not_measured(self) -> list[str]:
        """Figures a cell of this run cannot see (a deployment elsewhere)."""
        if not self.config.target:
            return []
        return ["server RSS", "server CPU", "server threads", "PostgreSQL memory",
                "machine speed",
                *([] if self.config.target_db else ["DB connections (no --target-db)"])]

    def unmeasured_columns(self) -> frozenset[str]:
        """resources.csv columns left empty: what not_measured() names."""
        if not self.config.target:
            return frozenset()
        # machine_probe_ms would time this machine, not the server's
        columns = {"server_rss_mib", "server_cpu_pct", "server_threads", "db_rss_mib",
                   "machine_probe_ms"}
        if not self.config.target_db:
            columns.add("db_connections")
        return frozenset(columns)

    def cell_settings(self, variant: Variant) -> dict[str, Any]:
        if self.config.target:
            return {"target": self.config.target,
                    "pg_max_connections": self.target_max_connections}
        return variant.settings()

    # -- hooks: what a cell measures, and its load --------------------------------------

    def open_deployment(self, cell: Cell, cell_dir: Path, stack: contextlib.ExitStack,
                        phases: _Phases) -> Deployment:
        """Latency, PostgreSQL with a fresh database, the server: started and listening."""
        if self.config.target:
            monitor = stack.enter_context(ConnectionMonitor(self.config.target_db)) \
                if self.config.target_db else None
            return TargetDeployment(str(self.config.target).rstrip("/"), monitor)
        pooler: PgBouncer | None = None
        session: LatencySession = stack.enter_context(
            open_latency(self.backend, cell.latency_ms, self.place["latency_cpus"]))
        if self.config.load_workers:
            # Served where the load hosts reach it: the master's address.
            session.server_bind_host = served_address(self.config)
        cluster = self._ensure_cluster(cell.variant, session.pg_listen_host)
        if not session.server_bind_host.startswith("127."):
            # A server in its own namespace connects from its veth address.
            cluster.allow_clients(f"{session.server_bind_host}/32")
        cluster.ensure_template(self.template_rows)
        phases.mark("postgres")
        dbname = cluster.clone_database(f"cell_{os.getpid()}")
        stack.callback(_drop_if_running, cluster, dbname)
        phases.mark("clone")
        assert cluster.port is not None  # started above
        db_host, db_port = cluster.host, cluster.port
        if cell.variant.pgbouncer is not None:
            assert self.pgbouncer_program is not None  # else its columns were skipped
            pooler = PgBouncer(self.pgbouncer_program, cluster.pgbouncer_folder)
            stack.callback(pooler.stop)
            pooler.start(cell.variant.pgbouncer, cluster.host, cluster.port, cluster.user,
                         cluster.scram_secret(), listen_host=session.pg_listen_host)
            _pin_pids(pooler.pids(), self.place["other_cpus"])
            assert pooler.port is not None
            db_host, db_port = pooler.host, pooler.port
            phases.mark("pgbouncer")
        db_host, db_port = session.db_endpoint(db_host, db_port)
        port = session.server_port()
        client_host, client_port = session.client_endpoint(port)
        _pin_pids(session.pids(), self.place["latency_cpus"])
        env = app_environment(
            cell.variant, cluster.app_env(dbname, db_host, db_port),
            allowed_hosts=sorted({"localhost", "127.0.0.1", session.server_bind_host,
                                  client_host}),
            cpu_loop=self.cpu_loop, cpu_ms=self.cpu_ms)
        command = session.command_prefix + cell.variant.server_command(
            session.server_bind_host, port)
        server = ServerProcess(command, env, cell_dir / "server.log",
                               cpu_affinity=self.place["server_cpus"])
        stack.callback(server.stop, SERVER_STOP_GRACE_S)
        phases.mark("latency")
        server.start()
        server.wait_listening(session.server_bind_host, port)
        phases.mark("server_start")
        return LocalDeployment(f"http://{client_host}:{client_port}", cluster.user, server,
                               cluster, session, pooler)

    def _locust(self, cell: Cell, cell_dir: Path, deployment: Deployment) -> LocustRun:
        cpus = None if self.config.target else self.place["other_cpus"]
        if self.config.load_workers:
            return MasterLocustRun(deployment.url, cell.route, self.profile, cell_dir,
                                   self.config.load_workers, self.config.master_bind,
                                   self.config.master_port, cpu_affinity=cpus)
        return LocustRun(deployment.url, cell.route, self.profile, cell_dir,
                         processes=self.config.load_processes, cpu_affinity=cpus)

    def launch_load(self, cell: Cell, cell_dir: Path, deployment: Deployment
                    ) -> LoadRun | None:
        """The load generator launched but held at its gate (its start() opens it), so it
        gets ready while the server is verified; None where it cannot wait at a gate."""
        locust = self._locust(cell, cell_dir, deployment)
        if not locust.can_launch_early:
            return None
        locust.launch()
        return locust

    def start_load(self, cell: Cell, cell_dir: Path, deployment: Deployment) -> LoadRun:
        locust = self._locust(cell, cell_dir, deployment)
        locust.start()
        return locust

    # -- the measurement, shared by every mode ---------------------------------------------

    def _measure(self, cell: Cell, cell_dir: Path, record: CellRecord) -> float:
        phases = _Phases(record)
        with contextlib.ExitStack() as stack:
            deployment = self.open_deployment(cell, cell_dir, stack, phases)
            # Locust's start-up (about 1.1 s) overlaps the verification (0.4-1.3 s): 0.5-0.7 s
            # a cell (quick, 6 cells, one after the other: 20.05 -> 19.34 s a cell). Launched
            # before the deployment instead, it saved no more (19.86 -> 19.39 s): beside
            # PostgreSQL it slowed the clone, beside the server its start.
            early = self.launch_load(cell, cell_dir, deployment)
            if early is not None:
                stack.callback(early.stop)
            # The cell's own route: checking all three (a 0.67-s cpu/ request in front of
            # every I/O cell) cost a default run 35-55 s; each route is checked in its cells.
            record.verification_ms = verify_routes(
                deployment.url, self.cpu_loop, None if self.config.target else self.template_rows,
                timeout_s=max(60.0, self.profile.timeout_s), routes=(cell.route,),
                cpu_ms=self.cpu_ms)
            phases.mark("verify")
            sampler = ResourceSampler(
                cell_dir / "resources.csv", deployment.server_pids, deployment.db_pids,
                lambda: load.pids(), db_user=deployment.db_user,
                helper_pids=deployment.helper_pids, pooler=deployment.pooler,
                unmeasured=self.unmeasured_columns(),
                db_connections=deployment.db_connections
                if isinstance(deployment, TargetDeployment) else None)
            if early is not None:
                load = early
                load.start()
            else:
                load = self.start_load(cell, cell_dir, deployment)
                stack.callback(load.stop)
            sampler.start()
            try:
                reason, end_s = self._hold(load, deployment.crashed, record)
            finally:
                sampler.stop()
            load.stop()
            load_s = phases.mark("load")
            record.reason = reason
            record.metrics = cell_metrics(cell_dir, self.profile.for_route(cell.route), end_s)
            if record.reason is None:
                empty = empty_load_reason(record.metrics)
                if empty:
                    record.reason = f"{empty}:\n{load.log_tail()}"
            phases.mark("metrics")
        phases.mark("stop")
        return load_s

    def _hold(self, load: LoadRun, crashed: Callable[[], str | None], record: CellRecord
              ) -> tuple[str | None, float | None]:
        """Hold the load until the steady sRPS is precise enough or the maximum hold has
        passed; (why the cell failed or None, when the load was stopped in s since its
        start, None if it ended by itself)."""
        profile = self.profile.for_route(record.route)
        # The hold counts from the first start.<pid> marker, never from when Locust was
        # launched: a master waits (up to WORKER_WAIT_S) for its workers before its test
        # starts, and a hold counted from the launch could end, and touch the stop file,
        # before any user ran (a worker that joined 12 s late got a cell with no request).
        log = RequestLog(load.live_dir)
        deadline = time.monotonic() + profile.max_duration_s + profile.timeout_s + 60 + (
            WORKER_WAIT_S if self.config.load_workers else 0)
        looks_precise = 0
        looked_at = -1.0
        start: float | None = None
        while time.monotonic() < deadline:
            # The last wait ends at the maximum hold itself, not up to POLL_S after it.
            wait_s = POLL_S if start is None else \
                min(POLL_S, max(0.0, start + profile.max_duration_s - time.time()))
            try:
                code = load.wait(timeout=wait_s)
            except TimeoutError:
                pass
            else:
                if code != 0:
                    return _load_failed(load, code), None
                record.stopped_by = "max_hold"
                return crashed(), None
            reason = crashed()
            if reason:
                load.stop()
                return reason, None
            log.poll()
            start = log.start()
            if start is None:
                continue
            since = time.time() - start
            # No margin here: the window ends at max_duration_s, and every request that
            # ended before it is in the log by the time Locust has exited.
            if since >= profile.max_duration_s:
                record.stopped_by = "max_hold"
                load.request_stop()
                return self._wait_stopped(load), profile.max_duration_s
            elapsed = since - LOG_MARGIN_S
            if profile.precision > 0 and elapsed >= profile.ramp_s + profile.min_hold_s:
                end_s = profile.ramp_s + BIN_S * int((elapsed - profile.ramp_s) / BIN_S)
                if end_s == looked_at:
                    continue  # a short last wait: the same bins again are not a new look
                looked_at = end_s
                state = analyse(log.responses().success_times(), profile.ramp_s, end_s)
                precise = (state.window_s >= profile.min_hold_s
                           and state.precise(profile.precision))
                # Two looks in a row: one stop on a chance-narrow interval would bias it.
                looks_precise = looks_precise + 1 if precise else 0
                if looks_precise >= PRECISE_LOOKS:
                    record.stopped_by = "precision"
                    load.request_stop()
                    return self._wait_stopped(load), end_s
        load.stop()
        raise RuntimeError("Locust did not finish in time")

    @staticmethod
    def _wait_stopped(load: LoadRun) -> str | None:
        """Locust ends its test within a couple of seconds of the stop file."""
        try:
            code = load.wait(timeout=15)
        except TimeoutError:
            load.stop()
            return None
        return None if code == 0 else _load_failed(load, code)


def _load_failed(load: LoadRun, code: int) -> str:
    """A load generator's failure: its own one-line reason (a lost worker) when it gave one."""
    reason = load.failure()
    tail = load.log_tail()
    if reason:
        return f"{reason} (Locust exit code {code})\n{tail}"
    return f"Locust exited with code {code}:\n{tail}"


class _Phases:
    """Seconds spent in each step of a cell (cell.json "phases_s"): where overhead goes."""

    def __init__(self, record: CellRecord) -> None:
        self.times = record.phases_s
        self._last = time.monotonic()

    def mark(self, name: str) -> float:
        now = time.monotonic()
        self.times[name] = round(now - self._last, 2)
        self._last = now
        return self.times[name]


def _cell_line(result: CellRecord) -> str:
    m = result.metrics
    ci = m.get("steady_half_width_pct")
    line = (f"    {result.status}: steady sRPS {m.get('steady_srps', 'n/a')}"
            f"{f' ± {ci}%' if ci is not None else ''} (warm-up {m.get('warmup_s', 'n/a')} s, "
            f"window {m.get('window_s', 'n/a')} s, stopped by {result.stopped_by}"
            f"{', UNSTEADY' if m.get('unsteady') else ''}), max sRPS {m.get('max_srps', 'n/a')}"
            f", failures {m.get('total_failures', 'n/a')}")
    if result.reason:
        line += f"; {result.reason.splitlines()[0]}"
    return line


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _finished(cell_dir: Path) -> str | None:
    """'ok' or 'failed' for a cell that needs no re-run; None to run it."""
    path = cell_dir / "cell.json"
    if not path.is_file():
        return None
    try:
        status = read_cell(path).status
    except RecordError:
        return None
    return status if status in {"ok", "failed"} else None


def _clear_partial(cell_dir: Path) -> None:
    """An unfinished cell's files are from an attempt that did not finish: start clean."""
    if cell_dir.is_dir():
        for item in cell_dir.iterdir():
            if item.is_file():
                item.unlink()
    cell_dir.mkdir(parents=True, exist_ok=True)


def _safe_metrics(cell_dir: Path, profile: Profile) -> Any:
    try:
        return cell_metrics(cell_dir, profile)
    except Exception:  # noqa: BLE001 - a failed cell keeps what can be computed
        return {}


def _drop_if_running(cluster: PostgresCluster, dbname: str) -> None:
    """Drop a cell's database; a PostgreSQL that died mid-cell is restarted by the next cell,
    whose clone replaces this one, so its failure reason stands rather than this error."""
    if cluster.running:
        cluster.drop_database(dbname)


def _pin_pids(pids: list[int], cpus: list[int]) -> None:
    from bench.server import pin

    for pid in pids:
        pin([p.pid for p in process_tree(pid)], cpus)


def _pin_tree(pid: int | None, cpus: list[int]) -> None:
    if pid:
        _pin_pids([pid], cpus)


SUMMARY_FIELDS = ("cell_id", "column", "variant", "study_label", "interface", "views", "route",
                  "latency_ms", "repeat", "order", "status", "stopped_by", "reason")
SUMMARY_METRICS = ("steady_srps", "steady_half_width_pct", "warmup_s", "window_s", "unsteady",
                   "batches_independent", "max_srps", "total_successes", "total_failures",
                   "p50_ms", "p95_ms", "p99_ms", "peak_server_rss_mib", "peak_server_threads",
                   "peak_db_connections", "peak_server_db_rss_mib", "mean_server_cpu_pct",
                   "mean_locust_cpu_pct", "load_generator_saturated", "mean_steal_pct",
                   "mean_outside_cpu_pct", "machine_probe_ms", "speed_slope",
                   "peak_pgbouncer_rss_mib", "peak_pgbouncer_clients",
                   "peak_pgbouncer_servers")


def write_summary(out: Path) -> Path:
    """summary.csv: one row per finished cell."""
    rows = []
    for path in sorted((out / "cells").glob("*/cell.json")):
        try:
            cell = read_cell(path)
        except RecordError:
            continue
        ci = cell.ci95 or (None, None)
        data = cell.to_json()
        rows.append([data.get(k) for k in SUMMARY_FIELDS]
                    + [cell.metrics.get(k) for k in SUMMARY_METRICS] + list(ci)
                    + [cell.settings.get("pg_max_connections")])
    header = (*SUMMARY_FIELDS, *SUMMARY_METRICS, "steady_ci_low", "steady_ci_high",
              "pg_max_connections")
    write_csv_atomic(out / "summary.csv", header, rows)
    return out / "summary.csv"


def run(config: RunConfig) -> tuple[int, Path]:
    """Run the matrix; (exit code, results folder)."""
    runner = Runner(config)
    return runner.run(), runner.out


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m bench run")
