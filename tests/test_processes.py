"""stop_process: the signal, the grace period, then SIGKILL for the group and strays."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.processes import stop_process

# Prints the pid of a child it forks, then waits; the child ignores SIGTERM.
PARENT_WITH_STUBBORN_CHILD = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"],
    start_new_session={new_session})
print(child.pid, flush=True)
time.sleep(60)
"""


def spawn(code: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def gone(pid: int) -> bool:
    """Dead within a second (a killed process still shows as running while it exits)."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_a_process_that_ignores_the_signal_is_killed_after_the_grace() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print(flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # the handler is in place
    started = time.monotonic()
    code = stop_process(proc, 0.5)
    assert code == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5


def test_the_group_member_that_ignores_sigterm_dies_with_its_leader() -> None:
    proc, child = spawn(PARENT_WITH_STUBBORN_CHILD.format(new_session=False))
    assert stop_process(proc, 2) == -signal.SIGTERM  # the leader obeyed
    assert gone(child)


def test_a_descendant_that_left_the_group_is_killed_too() -> None:
    proc, child = spawn(PARENT_WITH_STUBBORN_CHILD.format(new_session=True))
    try:
        stop_process(proc, 2)
        assert gone(child)
    finally:
        if not gone(child):
            psutil.Process(child).kill()


def test_signal_group_false_signals_the_leader_alone(tmp_path: Path) -> None:
    # The leader forwards nothing; a child that would print on SIGUSR1 stays silent,
    # and is then killed with the group.
    marker = tmp_path / "child-got-signal"
    child_code = ("import pathlib, signal, time; signal.signal(signal.SIGUSR1, "
                  f"lambda *a: pathlib.Path({str(marker)!r}).touch()); "
                  "print(flush=True); time.sleep(60)")
    code = ("import signal, subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', {child_code!r}], "
            "stdout=subprocess.PIPE)\n"
            "child.stdout.readline()\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    proc, child = spawn(code)
    assert stop_process(proc, 2, sig=signal.SIGUSR1, signal_group=False) == -signal.SIGUSR1
    assert gone(child)
    assert not marker.exists()


def test_a_group_member_forked_during_the_stop_is_killed_with_the_group(
        tmp_path: Path) -> None:
    # On SIGTERM the leader forks a SIGTERM-proof child (after stop_process's snapshot of
    # the tree), then exits: only the group's SIGKILL reaches that child.
    pid_file = tmp_path / "late-child.pid"
    code = ("import pathlib, signal, subprocess, sys, time\n"
            "def on_term(*_):\n"
            "    child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
            "time.sleep(60)'], stdout=subprocess.PIPE)\n"
            "    child.stdout.readline()\n"
            f"    pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, on_term)\n"
            "print(0, flush=True)\n"
            "time.sleep(60)\n")
    proc, _ = spawn(code)
    assert stop_process(proc, 5) == 0
    assert gone(int(pid_file.read_text()))
