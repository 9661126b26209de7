"""stop_process: the signal, the grace period, then SIGKILL for the group and strays."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]

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


# A harness that starts a server (here `sleep 60`) as the runner does, prints its pid,
# then waits to be killed.
HARNESS_WITH_SERVER = """
import os, sys, time
from pathlib import Path
from bench.server import ServerProcess
server = ServerProcess(["sleep", "60"], dict(os.environ), Path(sys.argv[1]))
server.start()
print(server.pid, flush=True)
time.sleep(60)
"""


def test_a_server_dies_with_a_harness_killed_by_sigkill(tmp_path: Path) -> None:
    harness = subprocess.Popen([sys.executable, "-c", HARNESS_WITH_SERVER,
                                str(tmp_path / "server.log")], stdout=subprocess.PIPE,
                               text=True, cwd=ROOT)
    assert harness.stdout is not None
    server = int(harness.stdout.readline())
    try:
        assert not gone(server)  # it runs while the harness does
        harness.kill()  # no cleanup of its own: only the kernel's parent-death signal
        harness.wait()
        assert gone(server)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(server).kill()


# A script under benchmarks/ running a `bench run`: the child takes a second to clean up
# after SIGINT and says so in a file; the script is interrupted alone (not its child).
SCRIPT_RUNNING_A_CHILD = """
import sys
from bench.processes import run_to_end
child = ("import signal, sys, time\\n"
         "def stop(*_):\\n"
         "    time.sleep(1)\\n"
         "    open(sys.argv[1], 'w').write('cleaned up')\\n"
         "    sys.exit(130)\\n"
         "signal.signal(signal.SIGINT, stop)\\n"
         "print('ready', flush=True)\\n"
         "time.sleep(60)\\n")
try:
    run_to_end([sys.executable, "-c", child, sys.argv[1]])
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_run_to_end_lets_the_run_clean_up_after_ctrl_c(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    # SIGINT as a terminal leaves it: a background job of a shell without job control
    # (`cmd &` in a script, as CI may be started) inherits it ignored, and Python then
    # installs no KeyboardInterrupt for it.
    script = subprocess.Popen([sys.executable, "-c", SCRIPT_RUNNING_A_CHILD, str(marker)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert script.stdout is not None
    assert script.stdout.readline().strip() == "ready"
    script.send_signal(signal.SIGINT)
    assert script.wait(timeout=30) == 130
    # subprocess.run would have SIGKILLed the child 0.25 s after the interrupt.
    assert marker.read_text() == "cleaned up"
