"""Locust, headless, as a subprocess: profiles from load/profiles.toml, one run per cell.

Locust writes its CSVs under `<cell>/.locust/`; when it has finished they are moved to
their final names (one rename each), and the per-process request logs are merged into
`responses.csv`, so a cell folder never holds a half-written file under a final name.
`processes > 1` uses Locust's own master/worker mode (`--processes N`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.paths import load_dir
from bench.processes import stop_process
from bench.results import write_csv_atomic

USER_CLASSES = {"cpu": "CpuUser", "io_read": "IoReadUser", "io_create": "IoCreateUser"}
PROFILE_KEYS: dict[str, type | tuple[type, ...]] = {
    "description": str, "users": int, "spawn_rate": (int, float), "duration_s": (int, float),
    "hold_start_s": (int, float), "timeout_s": (int, float)}
LOCUST_FILES = {"stats.csv": "locust_stats.csv", "stats_history.csv": "locust_stats_history.csv",
                "failures.csv": "locust_failures.csv", "exceptions.csv": "locust_exceptions.csv"}


class LoadError(Exception):
    """A bad profile or a load generator that cannot run; one line for the user."""


@dataclass(frozen=True)
class Profile:
    name: str
    users: int
    spawn_rate: float
    duration_s: float
    hold_start_s: float
    timeout_s: float
    description: str = ""

    @property
    def hold_s(self) -> float:
        return self.duration_s - self.hold_start_s


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
    for key, kind in PROFILE_KEYS.items():
        if key == "description":
            values[key] = str(table.get(key, ""))
            continue
        if key not in table:
            raise LoadError(f"{where}: [{name}] key {key!r} is missing")
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not isinstance(
                value, kind) or value <= 0 and (key != "hold_start_s" or value < 0):
            raise LoadError(f"{where}: [{name}] key {key!r} must be a positive number, "
                            f"not {value!r}")
        values[key] = value
    profile = Profile(name=name, **values)  # type: ignore[arg-type]
    if profile.hold_start_s >= profile.duration_s:
        raise LoadError(f"{where}: [{name}] hold_start_s ({profile.hold_start_s}) must be less "
                        f"than duration_s ({profile.duration_s})")
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
        self.profile = profile
        self.out_dir = out_dir
        self.work_dir = out_dir / ".locust"
        self.processes = processes
        self.cpu_affinity = cpu_affinity
        self._proc: subprocess.Popen[bytes] | None = None
        self._finished = False

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "locust", "-f", str(load_dir() / "locustfile.py"),
               "--headless", "--host", self.url, "--csv", str(self.work_dir / "locust"),
               "--csv-full-history", "--only-summary", "--loglevel", "WARNING",
               "--exit-code-on-error", "0", "--stop-timeout", "0"]
        if self.processes > 1:
            cmd += ["--processes", str(self.processes)]
        return [*cmd, USER_CLASSES[self.route]]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BENCH_PROFILE"] = json.dumps(asdict(self.profile))
        env["BENCH_RESPONSES_DIR"] = str(self.work_dir)
        return env

    def start(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        log = (self.work_dir / "locust.log").open("wb")
        self._proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
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
        """Stop Locust (and its workers) now; keeps what it wrote."""
        if self._proc is not None:
            stop_process(self._proc, 8)
        self._finish()

    def log_tail(self, lines: int = 8) -> str:
        for path in (self.work_dir / "locust.log", self.out_dir / "locust.log"):
            with contextlib.suppress(OSError):
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _finish(self) -> None:
        """Move Locust's files to their final names and merge the request logs."""
        if self._finished or not self.work_dir.is_dir():
            return
        self._finished = True
        for final, written in LOCUST_FILES.items():
            src = self.work_dir / written
            if src.is_file():
                os.replace(src, self.out_dir / final)
        rows: list[list[str]] = []
        for part in sorted(self.work_dir.glob("responses.*.csv")):
            with part.open(newline="") as handle:
                reader = csv.reader(handle)
                next(reader, None)
                rows.extend(reader)
        rows.sort(key=lambda r: float(r[0]))
        write_csv_atomic(self.out_dir / "responses.csv",
                         ("t_s", "name", "response_time_ms", "ok", "kind"), rows)
        if (self.work_dir / "locust.log").is_file():
            os.replace(self.work_dir / "locust.log", self.out_dir / "locust.log")
        shutil.rmtree(self.work_dir, ignore_errors=True)
