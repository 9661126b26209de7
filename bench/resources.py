"""Per-second resource samples of a cell: server tree, PostgreSQL, Locust.

Memory is the proportional set size (PSS) summed over a process tree: shared pages
(gunicorn's preloaded code, PostgreSQL's shared buffers) are split among the processes
that share them, so a tree's sum is its real footprint, where an RSS sum would count
shared buffers once per backend. Database connections are counted from the backends'
process titles rather than a query, so counting never takes one of the slots whose
exhaustion ("too many clients") is being measured.

The machine is part of the measurement (pyperf records its system state the same way):
`steal_pct` is CPU time the hypervisor gave to other guests, and `outside_cpu_pct` is the
CPU used by processes outside the cell (all busy time less the server, PostgreSQL, Locust,
the latency helpers and the harness itself). Percentages are of one core, like a
process's CPU %, so 200 is both cores of a 2-core machine. `machine_probe_ms` is how long
a small fixed loop took in thread CPU time on each core, the mean of the probes since the
last sample (ten a second: bench/machine.py SpeedProbe): the machine's speed during the
cell, which steal does not show on these virtual machines.

A variant behind PgBouncer adds its memory, and its client-side and server-side
connections as PgBouncer's own sockets show them (bench/pgbouncer.py); the columns are
empty for a variant without it.

A deployment on other hosts (`bench run --target`) has no processes here: its columns are
left empty ("not measured"), never written as 0, and its connections can come from
PostgreSQL itself (`db_connections`, bench/postgres.py's ConnectionMonitor).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psutil

from bench.machine import SpeedProbe
from bench.results import write_csv_atomic

HEADER = ("t_s", "server_rss_mib", "server_cpu_pct", "server_threads", "db_connections",
          "db_rss_mib", "locust_cpu_pct", "steal_pct", "outside_cpu_pct", "pgbouncer_rss_mib",
          "pgbouncer_clients", "pgbouncer_servers", "machine_probe_ms")
MIB = 1024 * 1024


class Pooler(Protocol):
    """A connection pooler between the server and PostgreSQL (bench.pgbouncer.PgBouncer)."""

    def pids(self) -> list[int]: ...
    def connections(self) -> tuple[int, int]: ...


class _Tree:
    """A process tree whose Process objects are kept, so cpu_percent has a baseline."""

    def __init__(self, root_pids: Callable[[], list[int]]) -> None:
        self._root_pids = root_pids
        self._procs: dict[int, psutil.Process] = {}

    def processes(self) -> list[psutil.Process]:
        current: dict[int, psutil.Process] = {}
        for pid in self._root_pids():
            try:
                root = self._procs.get(pid) or psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    current[proc.pid] = self._procs.get(proc.pid, proc)
            except psutil.NoSuchProcess:
                continue
        self._procs = current
        return list(current.values())


def _memory_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total / MIB


def _cpu_pct(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += proc.cpu_percent(None)
        except psutil.NoSuchProcess:
            pass
    return total


def _threads(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.num_threads()
        except psutil.NoSuchProcess:
            pass
    return total


def db_client_connections(procs: list[psutil.Process], db_user: str) -> int:
    """Backends serving a client of `db_user` (title 'postgres: USER DB HOST(PORT) ...')."""
    prefix = f"postgres: {db_user} "
    count = 0
    for proc in procs:
        try:
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd and cmd[0].startswith(prefix):
            count += 1
    return count


class _MachineCpu:
    """Steal and busy CPU of the whole machine since the last sample, in % of one core."""

    def __init__(self) -> None:
        self._last: tuple[float, Any] | None = None

    def sample(self) -> tuple[float, float]:
        now, times = time.monotonic(), psutil.cpu_times()
        last, self._last = self._last, (now, times)
        if last is None or now <= last[0]:
            return 0.0, 0.0
        wall = now - last[0]

        def delta(name: str) -> float:
            return max(getattr(times, name, 0.0) - getattr(last[1], name, 0.0), 0.0)

        total = sum(delta(name) for name in times._fields)
        idle = delta("idle") + delta("iowait")
        steal = delta("steal")
        # guest time is also counted in user time on Linux: leave it out of the sum
        busy = total - idle - steal - delta("guest") - delta("guest_nice")
        return 100 * steal / wall, 100 * max(busy, 0.0) / wall


class ResourceSampler:
    """Samples once a second on a thread until stop(); writes resources.csv."""

    def __init__(
        self, out_csv: Path, server_pids: Callable[[], list[int]],
        db_pids: Callable[[], list[int]], locust_pids: Callable[[], list[int]],
        db_user: str, interval_s: float = 1.0,
        helper_pids: Callable[[], list[int]] = list, pooler: Pooler | None = None,
        unmeasured: frozenset[str] = frozenset(),
        db_connections: Callable[[], int | None] | None = None,
        probe_cpus: list[int] | None = None,
    ) -> None:
        unknown = unmeasured - set(HEADER)
        if unknown:
            raise ValueError(f"unknown resources.csv columns: {', '.join(sorted(unknown))}")
        self.unmeasured = unmeasured
        self._db_connections = db_connections
        self.out_csv = out_csv
        self.interval_s = interval_s
        self.db_user = db_user
        self._server = _Tree(server_pids)
        self._db = _Tree(db_pids)
        self._locust = _Tree(locust_pids)
        self._helpers = _Tree(lambda: [os.getpid(), *helper_pids()])
        self._pooler = pooler
        self._pooler_tree = _Tree(pooler.pids if pooler else list)
        self._machine = _MachineCpu()
        cpus = sorted(os.sched_getaffinity(0)) if probe_cpus is None else probe_cpus
        self._probe = SpeedProbe(cpus) if cpus else None
        self.rows: list[tuple[float | None, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resources", daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        for tree in (self._server, self._db, self._locust, self._helpers, self._pooler_tree):
            _cpu_pct(tree.processes())  # prime cpu_percent baselines
        self._machine.sample()
        if self._probe is not None:
            self._probe.start()
        self._thread.start()

    def sample(self) -> tuple[float | None, ...]:
        server = self._server.processes()
        db = self._db.processes()
        locust = self._locust.processes()
        server_cpu, db_cpu, locust_cpu = _cpu_pct(server), _cpu_pct(db), _cpu_pct(locust)
        helpers_cpu = _cpu_pct(self._helpers.processes())
        pooler = self._pooler_tree.processes()
        helpers_cpu += _cpu_pct(pooler)
        steal, busy = self._machine.sample()
        probe = self._probe.take() if self._probe is not None else None
        outside = max(busy - server_cpu - db_cpu - locust_cpu - helpers_cpu, 0.0)
        pooler_columns: tuple[float | int | None, ...] = (None, None, None)
        if self._pooler is not None:
            clients, servers = self._pooler.connections()
            pooler_columns = (round(_memory_mib(pooler), 2), clients, servers)
        connections = self._db_connections() if self._db_connections is not None \
            else db_client_connections(db, self.db_user)
        row = (
            round(time.monotonic() - self._t0, 2),
            round(_memory_mib(server), 2),
            round(server_cpu, 1),
            _threads(server),
            connections,
            round(_memory_mib(db), 2),
            round(locust_cpu, 1),
            round(steal, 1),
            round(outside, 1),
            *pooler_columns,
            probe,
        )
        return tuple(None if name in self.unmeasured else value
                     for name, value in zip(HEADER, row, strict=True))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.rows.append(self.sample())
            except Exception:  # noqa: BLE001, S112 - a failed sample must not end the cell
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._probe is not None:
            self._probe.stop()
        write_csv_atomic(self.out_csv, HEADER, self.rows)
