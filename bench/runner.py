"""A run: every cell of variant x route x latency x repeat, one after the other.

The runner only composes: variants (data), PostgreSQL, latency, server, verification,
Locust, the resource sampler, metrics. Each cell starts from a fresh database clone and
leaves nothing running; finished cells survive a crash or Ctrl-C, and --resume skips them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench import metadata
from bench.latency import LatencySession, open_latency, resolve_backend
from bench.load import LocustRun, Profile, load_profile
from bench.metrics import cell_metrics
from bench.paths import results_dir
from bench.postgres import PostgresCluster
from bench.resources import ResourceSampler
from bench.results import FORMAT, read_json, write_csv_atomic, write_json_atomic
from bench.server import ServerError, ServerProcess, app_environment
from bench.variants import Variant, discover, select
from bench.verify import ROUTES, VerificationError, verify_routes

console = Console(stderr=True, highlight=False)
# After the load the server's queued work is worthless: a server busy with queued cpu/
# requests (or hundreds of slow ones at 200 ms) would take its whole graceful timeout.
# SIGTERM, this long to exit, then SIGKILL to its process group.
SERVER_STOP_GRACE_S = 1.0


class RunError(Exception):
    """A run that cannot start or resume; one line for the user."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


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
    target: str | None = None
    pg_bin: Path | None = None
    pg_max_connections: list[int] | None = None
    pool_sizes: list[int] | None = None
    cpu_loop: int = 10**7
    rows: int = 1_000_000

    def comparable(self) -> dict[str, Any]:
        """What must match for --resume to continue a run."""
        data = asdict(self)
        for key in ("out", "resume", "pg_bin"):
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


def sweep_columns(variant: Variant, config: RunConfig) -> list[tuple[str, Variant]]:
    """The variant, or one column per connection-limit combination of the sweep."""
    pg_values: list[int | None] = [*config.pg_max_connections] if config.pg_max_connections \
        else [None]
    pool_values: list[int | None] = [*config.pool_sizes] if config.pool_sizes and variant.pool \
        else [None]
    columns = []
    for pg in pg_values:
        for pool in pool_values:
            suffix = (f"+pg{pg}" if pg is not None else "") + (
                f"+pool{pool}" if pool is not None else "")
            columns.append((variant.name + suffix, variant.with_overrides(pg, pool)))
    return columns


def plan_cells(config: RunConfig, variants: list[Variant]) -> list[Cell]:
    cells = []
    for repeat in range(1, config.repeats + 1):
        for variant in variants:
            for column, configured in sweep_columns(variant, config):
                for route in config.routes:
                    for latency in config.latencies_ms:
                        cells.append(Cell(column, configured, route, latency, repeat))
    return cells


def placement() -> dict[str, list[int]]:
    """The server on its own core, everything else on the rest (with >= 2 cores)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"server_cpus": cpus, "other_cpus": cpus}
    return {"server_cpus": cpus[-1:], "other_cpus": cpus[:-1]}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM both end the run the same way: cleanly, cells kept."""
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def caveats(backend: str, backend_reason: str, place: dict[str, list[int]],
            config: RunConfig) -> list[str]:
    notes = []
    cores = len(os.sched_getaffinity(0))
    if cores <= 4:
        notes.append(f"{cores} cores: the server has {len(place['server_cpus'])} core(s); "
                     "PostgreSQL, Locust and the latency proxy share the rest")
    if backend == "proxy":
        notes.append("latency by TCP proxy, not netem: TCP handshakes are not delayed (the "
                     "server's SYN to PostgreSQL, its SYN-ACK to clients), so a new connection "
                     f"costs one L less than under netem ({backend_reason})")
    if config.repeats == 1:
        notes.append("one repeat per cell: confidence intervals are batch means within a cell")
    if config.target:
        notes.append(f"external target {config.target}: no server/DB resources sampled")
    return notes


class Runner:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.profile: Profile = load_profile(config.profile)
        self.variants = select(discover(), config.variants)
        self.place = placement()
        # Created now so missing PostgreSQL binaries are an error before any cell runs.
        self.cluster: PostgresCluster | None = (
            None if config.target else PostgresCluster(pg_bin=config.pg_bin))
        self.template_rows = config.rows
        self.out = self._out_dir()
        self.run_json = self.out / "run.json"
        self.cells = plan_cells(config, self.variants)
        self.backend, self.backend_reason = self._resolve_latency()
        if self.backend == "none" and any(config.latencies_ms):
            raise RunError("--latency-backend none adds no latency: use --latencies 0, or "
                           "--latency-backend auto|proxy|netem")

    def _resolve_latency(self) -> tuple[str, str]:
        """(backend, why) for this run; Docker mode probes inside its containers instead."""
        return resolve_backend(self.config.latency_backend)

    def _out_dir(self) -> Path:
        if self.config.resume:
            folder = self.config.resume
            if not (folder / "run.json").is_file():
                raise RunError(f"{folder} is not a results folder (no run.json)")
            previous = read_json(folder / "run.json").get("config", {})
            mine = self.config.comparable()
            mine["out"] = None
            diff = [k for k, v in mine.items() if k != "out" and previous.get(k) != _jsonable(v)]
            if diff:
                raise RunError(f"cannot resume {folder}: configuration differs in "
                               f"{', '.join(diff)} (was {previous.get(diff[0])!r}, "
                               f"now {_jsonable(mine[diff[0]])!r})")
            return folder
        if self.config.out:
            if (self.config.out / "run.json").exists():
                raise RunError(f"{self.config.out} already holds a run; use --resume "
                               f"{self.config.out} or another --out")
            return self.config.out
        return results_dir() / datetime.now().strftime("%Y-%m-%dT%H-%M-%S")

    def run_metadata(self, status: str, started: str, ended: str | None) -> dict[str, Any]:
        commit, dirty = metadata.git_state()
        return {
            "format": FORMAT,
            "run_id": self.out.name,
            "started_at": started,
            "ended_at": ended,
            "status": status,
            "config": _jsonable(self.config.comparable()),
            "profile": asdict(self.profile),
            "latency_backend": self.backend,
            "latency_backend_reason": self.backend_reason,
            "machine": metadata.machine(),
            "packages": metadata.package_versions(),
            "postgres_version": self.cluster.version if self.cluster else None,
            "git_commit": commit,
            "git_dirty": dirty,
            "placement": self.place,
            "caveats": caveats(self.backend, self.backend_reason, self.place, self.config),
            "cells": [c.cell_id for c in self.cells],
        }

    def run(self) -> int:
        started = now_iso()
        if self.run_json.exists():
            started = read_json(self.run_json).get("started_at", started)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_json, self.run_metadata("running", started, None))
        console.print(f"run: {len(self.cells)} cells -> {self.out}  (latency backend: "
                      f"{self.backend}; profile {self.profile.name})")
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
            result = self.run_cell(cell, cell_dir)
            done_here += 1
            failed += result["status"] == "failed"
            metrics = result.get("metrics", {})
            line = (f"    {result['status']}: steady sRPS {metrics.get('steady_srps', 'n/a')}, "
                    f"max sRPS {metrics.get('max_srps', 'n/a')}, "
                    f"failures {metrics.get('total_failures', 'n/a')}")
            if result.get("reason"):
                line += f"; {result['reason'].splitlines()[0]}"
            console.print(line)
        return failed

    def _ensure_cluster(self, variant: Variant, listen_host: str) -> PostgresCluster:
        if self.cluster is None:
            self.cluster = PostgresCluster(pg_bin=self.config.pg_bin)
        self.cluster.start(max_connections=variant.max_connections, listen_host=listen_host)
        _pin_tree(self.cluster.postmaster_pid, self.place["other_cpus"])
        return self.cluster

    def run_cell(self, cell: Cell, cell_dir: Path) -> dict[str, Any]:
        """Run one cell; always returns (and writes) its cell.json content."""
        _clear_partial(cell_dir)
        started = now_iso()
        t0 = time.monotonic()
        record: dict[str, Any] = {
            "format": FORMAT, "cell_id": cell.cell_id, "column": cell.column,
            "variant": cell.variant.name, "title": cell.variant.title,
            "study_label": cell.variant.study_label, "interface": cell.variant.interface,
            "views": cell.variant.views, "route": cell.route, "latency_ms": cell.latency_ms,
            "repeat": cell.repeat, "settings": cell.variant.settings(),
            "latency_backend": self.backend, "placement": self.place,
            "status": "failed", "reason": None, "metrics": {},
        }
        load_s = 0.0
        try:
            load_s = self._measure(cell, cell_dir, record)
            record["status"] = "ok" if record["reason"] is None else "failed"
        except Interrupted:
            record["status"] = "interrupted"
            record["reason"] = "the run was interrupted during this cell"
            raise
        except (ServerError, VerificationError) as exc:
            record["reason"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - any crash fails this cell, not the run
            record["reason"] = f"{type(exc).__name__}: {exc}"
        finally:
            record["metrics"] = record["metrics"] or _safe_metrics(cell_dir, self.profile)
            record["started_at"] = started
            record["ended_at"] = now_iso()
            record["duration_s"] = round(time.monotonic() - t0, 2)
            record["overhead_s"] = round(record["duration_s"] - load_s, 2)
            write_json_atomic(cell_dir / "cell.json", record)
        return record

    def _measure(self, cell: Cell, cell_dir: Path, record: dict[str, Any]) -> float:
        if self.config.target:
            return self._measure_target(cell, cell_dir, record)
        phases = _Phases(record)
        with contextlib.ExitStack() as stack:
            session: LatencySession = stack.enter_context(
                open_latency(self.backend, cell.latency_ms, self.place["other_cpus"]))
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
            db_host, db_port = session.db_endpoint(cluster.host, cluster.port)
            port = session.server_port()
            client_host, client_port = session.client_endpoint(port)
            _pin_pids(session.pids(), self.place["other_cpus"])
            env = app_environment(
                cell.variant, cluster.app_env(dbname, db_host, db_port),
                allowed_hosts=sorted({"localhost", "127.0.0.1", session.server_bind_host,
                                      client_host}),
                cpu_loop=self.config.cpu_loop)
            command = session.command_prefix + cell.variant.server_command(
                session.server_bind_host, port)
            server = ServerProcess(command, env, cell_dir / "server.log",
                                   cpu_affinity=self.place["server_cpus"])
            stack.callback(server.stop, SERVER_STOP_GRACE_S)
            phases.mark("latency")
            server.start()
            server.wait_listening(session.server_bind_host, port)
            phases.mark("server_start")
            url = f"http://{client_host}:{client_port}"
            verify_routes(url, self.config.cpu_loop, self.template_rows,
                          timeout_s=max(60.0, self.profile.timeout_s))
            phases.mark("verify")
            locust = LocustRun(url, cell.route, self.profile, cell_dir,
                               processes=self.config.load_processes,
                               cpu_affinity=self.place["other_cpus"])
            sampler = ResourceSampler(
                cell_dir / "resources.csv", server.pids,
                lambda: [cluster.postmaster_pid] if cluster.postmaster_pid else [],
                locust.pids, db_user=cluster.user)
            stack.callback(locust.stop)
            locust.start()
            sampler.start()

            def crashed() -> str | None:
                code = server.exit_code()
                if code is not None:
                    return f"server exited with code {code} during the load:\n" \
                           f"{server.log_tail(8)}"
                if not cluster.running:
                    return f"PostgreSQL exited during the load: {cluster.log_tail(3)}"
                return None

            try:
                record["reason"] = self._wait_load(locust, crashed)
            finally:
                sampler.stop()
            load_s = phases.mark("load")
            record["metrics"] = cell_metrics(cell_dir, self.profile)
            phases.mark("metrics")
        phases.mark("stop")
        return load_s

    def _wait_load(self, locust: LocustRun, crashed: Callable[[], str | None]) -> str | None:
        """Wait for Locust to finish; the reason the cell failed, or None."""
        deadline = time.monotonic() + self.profile.duration_s + self.profile.timeout_s + 30
        while time.monotonic() < deadline:
            try:
                code = locust.wait(timeout=0.5)
            except TimeoutError:
                reason = crashed()
                if reason:
                    locust.stop()
                    return reason
                continue
            if code != 0:
                return f"Locust exited with code {code}:\n{locust.log_tail()}"
            return crashed()
        locust.stop()
        raise RuntimeError("Locust did not finish in time")

    def _measure_target(self, cell: Cell, cell_dir: Path, record: dict[str, Any]) -> float:
        url = str(self.config.target).rstrip("/")
        verify_routes(url, self.config.cpu_loop, None, timeout_s=max(60.0, self.profile.timeout_s))
        locust = LocustRun(url, cell.route, self.profile, cell_dir,
                           processes=self.config.load_processes)
        sampler = ResourceSampler(cell_dir / "resources.csv", lambda: [], lambda: [],
                                  locust.pids, db_user="")
        t_load = time.monotonic()
        try:
            locust.start()
            sampler.start()
            locust.wait(timeout=self.profile.duration_s + self.profile.timeout_s + 30)
        finally:
            sampler.stop()
            locust.stop()
        record["metrics"] = cell_metrics(cell_dir, self.profile)
        return time.monotonic() - t_load


class _Phases:
    """Seconds spent in each step of a cell (cell.json "phases_s"): where overhead goes."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.times: dict[str, float] = {}
        record["phases_s"] = self.times
        self._last = time.monotonic()

    def mark(self, name: str) -> float:
        now = time.monotonic()
        self.times[name] = round(now - self._last, 2)
        self._last = now
        return self.times[name]


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
        status = read_json(path).get("status")
    except (OSError, ValueError):
        return None
    return status if status in {"ok", "failed"} else None


def _clear_partial(cell_dir: Path) -> None:
    """An unfinished cell's files are from an attempt that did not finish: start clean."""
    if cell_dir.is_dir():
        for item in cell_dir.iterdir():
            if item.is_file():
                item.unlink()
    cell_dir.mkdir(parents=True, exist_ok=True)


def _safe_metrics(cell_dir: Path, profile: Profile) -> dict[str, Any]:
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
    from bench.server import pin, process_tree

    for pid in pids:
        pin([p.pid for p in process_tree(pid)], cpus)


def _pin_tree(pid: int | None, cpus: list[int]) -> None:
    if pid:
        _pin_pids([pid], cpus)


SUMMARY_FIELDS = ("cell_id", "column", "variant", "study_label", "interface", "views", "route",
                  "latency_ms", "repeat", "status", "reason")
SUMMARY_METRICS = ("steady_srps", "max_srps", "total_successes", "total_failures", "p50_ms",
                   "p95_ms", "p99_ms", "peak_server_rss_mib", "peak_server_threads",
                   "peak_db_connections", "peak_server_db_rss_mib", "mean_server_cpu_pct",
                   "mean_locust_cpu_pct", "load_generator_saturated")


def write_summary(out: Path) -> Path:
    """summary.csv: one row per finished cell."""
    rows = []
    for path in sorted((out / "cells").glob("*/cell.json")):
        try:
            cell = read_json(path)
        except (OSError, ValueError):
            continue
        metrics = cell.get("metrics") or {}
        ci = metrics.get("steady_srps_ci95") or [None, None]
        rows.append([cell.get(k) for k in SUMMARY_FIELDS]
                    + [metrics.get(k) for k in SUMMARY_METRICS] + list(ci)
                    + [(cell.get("settings") or {}).get("pg_max_connections")])
    header = (*SUMMARY_FIELDS, *SUMMARY_METRICS, "steady_ci_low", "steady_ci_high",
              "pg_max_connections")
    write_csv_atomic(out / "summary.csv", header, rows)
    return out / "summary.csv"


_LAST_OUT: list[Path] = []


def run(config: RunConfig) -> int:
    runner = Runner(config)
    _LAST_OUT[:] = [runner.out]
    return runner.run()


def last_out() -> Path:
    """The results folder of the last run() in this process."""
    return _LAST_OUT[-1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m bench run")
