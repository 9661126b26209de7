"""Per-second resource samples of a cell: server tree, PostgreSQL, Locust.

Memory is the proportional set size (PSS) summed over a process tree: shared pages
(gunicorn's preloaded code, PostgreSQL's shared buffers) are split among the processes
that share them, so a tree's sum is its real footprint, where an RSS sum would count
shared buffers once per backend. Database connections are counted from the backends'
process titles rather than a query, so counting never takes one of the slots whose
exhaustion ("too many clients") is being measured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.results import write_csv_atomic

HEADER = ("t_s", "server_rss_mib", "server_cpu_pct", "server_threads", "db_connections",
          "db_rss_mib", "locust_cpu_pct")
MIB = 1024 * 1024


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


class ResourceSampler:
    """Samples once a second on a thread until stop(); writes resources.csv."""

    def __init__(
        self, out_csv: Path, server_pids: Callable[[], list[int]],
        db_pids: Callable[[], list[int]], locust_pids: Callable[[], list[int]],
        db_user: str, interval_s: float = 1.0,
    ) -> None:
        self.out_csv = out_csv
        self.interval_s = interval_s
        self.db_user = db_user
        self._server = _Tree(server_pids)
        self._db = _Tree(db_pids)
        self._locust = _Tree(locust_pids)
        self.rows: list[tuple[float, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resources", daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        for tree in (self._server, self._db, self._locust):
            _cpu_pct(tree.processes())  # prime cpu_percent baselines
        self._thread.start()

    def sample(self) -> tuple[float, ...]:
        server = self._server.processes()
        db = self._db.processes()
        locust = self._locust.processes()
        return (
            round(time.monotonic() - self._t0, 2),
            round(_memory_mib(server), 2),
            round(_cpu_pct(server), 1),
            _threads(server),
            db_client_connections(db, self.db_user),
            round(_memory_mib(db), 2),
            round(_cpu_pct(locust), 1),
        )

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
        write_csv_atomic(self.out_csv, HEADER, self.rows)
