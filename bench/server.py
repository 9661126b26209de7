"""Starts one variant's server process, waits until it listens, stops its whole tree."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import IO

import psutil

from bench.net import is_listening
from bench.processes import child_setup, process_tree, stop_process
from bench.variants import Variant


class ServerError(Exception):
    """The server did not come up, or died; the message carries the tail of its log."""


def app_environment(
    variant: Variant, db_env: dict[str, str], allowed_hosts: list[str], cpu_loop: int,
    secret_key: str | None = None, cpu_ms: float | None = None,
) -> dict[str, str]:
    """The full environment of a server process: ours, the variant's, the database's.

    `cpu_ms`: cpu/ runs for that much CPU time a request (shared_app posts.validation
    cpu_for); None: the fixed `cpu_loop`."""
    env = dict(os.environ)
    env.update(variant.app_env())
    env.update(db_env)
    env.update({
        "DJANGO_SETTINGS_MODULE": "benchapp.settings",
        # A random secret per run unless the user gave one: none lives in code.
        "DJANGO_SECRET_KEY": secret_key or os.environ.get("DJANGO_SECRET_KEY")
        or secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": ",".join(allowed_hosts),
        "POSTS_CPU_LOOP": str(cpu_loop),
        "POSTS_CPU_MS": str(cpu_ms or 0),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def pin(pids: list[int], cpus: list[int] | None) -> None:
    if not cpus:
        return
    for pid in pids:
        try:
            psutil.Process(pid).cpu_affinity(cpus)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


class ServerProcess:
    def __init__(
        self, command: list[str], env: dict[str, str], log_path: Path,
        cpu_affinity: list[int] | None = None,
    ) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.cpu_affinity = cpu_affinity
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        # Pinned before exec, so the workers a server forks at boot inherit the pinning.
        self._proc = subprocess.Popen(
            self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=child_setup(self.cpu_affinity),
        )

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait_exit(self, timeout_s: float | None = None) -> int | None:
        """The exit code once the server exits; None if still running after timeout_s."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def pids(self) -> list[int]:
        return [p.pid for p in process_tree(self.pid)] if self.pid else []

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_listening(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        """Returns once a TCP connect succeeds; raises if the process exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise ServerError(f"server exited with code {code} before listening:\n"
                                  f"{self.log_tail()}")
            if is_listening(host, port):
                return
            time.sleep(0.05)  # poll interval of the readiness check
        raise ServerError(f"server not listening on {host}:{port} after {timeout_s:.0f} s:\n"
                          f"{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL whatever is left after timeout_s."""
        if self._proc is None:
            return
        stop_process(self._proc, timeout_s)
        if self._log:
            self._log.close()
            self._log = None
        self._proc = None
