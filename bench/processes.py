"""Stopping the harness's child processes: a signal, a grace period, then SIGKILL.

Every child (server, PostgreSQL, Locust, proxy) is started in a session of its own, so
its process group holds whatever it forked; the final SIGKILL goes to the whole group, and
descendants that left the group (psutil finds them) are killed one by one, so nothing
outlives a cell.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import psutil


def die_with_parent() -> None:
    """In a child, before exec (a preexec_fn): SIGTERM it when the harness dies, even by
    SIGKILL, so a killed harness leaves no server, Locust or proxy running (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing). Call it in children started from the main
    thread: the signal follows the thread that forked."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_setup(cpus: list[int] | None) -> Callable[[], None]:
    """A preexec_fn for a harness child: die_with_parent, then pinned to `cpus` (if any)
    before exec, so whatever it forks at start inherits the pinning."""
    def setup() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


def run_to_end(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run for a `bench run` started by a script under benchmarks/, except on
    Ctrl-C: subprocess.run SIGKILLs its child 0.25 s after the interrupt, before the
    harness has stopped its servers and PostgreSQL, which were left running. Here the
    child runs in a session of its own (a terminal's Ctrl-C reaches this script only, so
    the child gets one SIGINT, not a second one in the middle of its cleanup), gets SIGINT
    from here, and is waited for; then the interrupt goes on."""
    with subprocess.Popen(command, text=True, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate()
        except KeyboardInterrupt:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and its descendants now ([] when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process(proc: subprocess.Popen[Any], timeout_s: float, *,
                 sig: int = signal.SIGTERM, signal_group: bool = True,
                 own_group: bool = True) -> int:
    """Send `sig`, wait up to `timeout_s` for `proc` to exit, then SIGKILL what is left.

    `signal_group`: `sig` goes to the whole process group; False sends it to the leader
    alone, for a process that stops its children itself (PostgreSQL's postmaster).
    `own_group`: `proc` was started with `start_new_session=True`, so its group is ours to
    kill. Returns the exit code (negative: the signal that ended it).
    """
    descendants = process_tree(proc.pid)[1:]
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if own_group and signal_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    if descendants:
        # A quarter of the leader's grace for its descendants to follow it out (a
        # gunicorn master returns once its workers are told, not once they are gone).
        _, alive = psutil.wait_procs(descendants, timeout=max(0.1, timeout_s / 4))
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
    if own_group:
        # Members forked after the snapshot, or left behind by a leader that exited. A
        # pid is not reused while a group of that id has members, so a live group is ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
