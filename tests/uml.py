"""Run one command inside User-Mode Linux, on this machine's own filesystem.

These machines' kernel has no `sch_netem`; Debian's `user-mode-linux` package (kernel 6.1)
ships it as a module, so the netem backend can run for real in a UML guest:

    linux.uml mem=1G root=/dev/root rootfstype=hostfs rootflags=/ ro init=tests/uml_init.sh

boots in a few seconds on the host's root filesystem (hostfs, read-only), with no image to
build. The guest sees the same paths as the host, so the project's virtual environment
(.nox/tests) runs in it unchanged. `tests/uml_init.sh` is its init: it mounts proc, sys,
/dev and tmpfs on /run, /tmp and /dev/shm, mounts the job's folders read-write (hostfs
again, same path), loads the kernel modules, runs the job's `run.sh` with a timeout,
writes its output and exit code into the job folder, and powers off.

    result = run_in_uml(["python", "-c", "print(1)"], rw=[out_dir], timeout_s=120)
    result.returncode, result.output

The guest has one CPU and slow system calls: a place to verify behaviour, not to measure
absolute speed. Writes outside the read-write folders land on tmpfs and vanish at
power-off. `/etc` is read-only in the guest, so a user the job needs (PostgreSQL's
`benchpg`, which `useradd` would add to /etc/passwd) must exist on the host before the
boot: call `bench.pg_install.ensure_os_user()` on the host first.

Where UML cannot run (no `linux.uml`, no modules, a boot that fails, e.g. without ptrace),
`uml_problem()` says why in one line; tests skip with it. `nox -s tests` installs the
package as root where apt-get exists (noxfile.py, install_uml).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KERNEL = "linux.uml"
MODULES_ROOT = Path("/usr/lib/uml/modules")
# Relative to MODULES_ROOT/<version>/kernel.
MODULES = ("net/sched/sch_netem.ko", "drivers/net/veth.ko")
INIT_SCRIPT = Path(__file__).resolve().with_name("uml_init.sh")
REPO_ROOT = Path(__file__).resolve().parent.parent
# Seconds a guest gets to power off after its job's own timeout.
HALT_GRACE_S = 30.0


@dataclass(frozen=True)
class UmlResult:
    returncode: int  # the job's exit code (124: killed by its timeout); -1: no exit code
    output: str  # the job's stdout and stderr
    console: str  # the kernel console (boot messages, init's own errors)
    seconds: float  # wall time of the whole boot, job and power-off


def modules_dir() -> Path | None:
    """MODULES_ROOT/<version>/kernel of the installed UML kernel (the newest, if several)."""
    versions = sorted(MODULES_ROOT.glob("*/kernel")) if MODULES_ROOT.is_dir() else []
    return versions[-1] if versions else None


def module_paths() -> list[Path]:
    root = modules_dir()
    return [root / rel for rel in MODULES] if root else []


SHIM_SOURCE = Path(__file__).resolve().with_name("uml_xstate_shim.c")


def host_has_avx512() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " avx512f" in line for line in text.splitlines())


@functools.cache
def xstate_shim() -> Path:
    """The LD_PRELOAD shim UML 6.1 needs on an AVX-512 host (see uml_xstate_shim.c),
    compiled once per source; OSError when there is no C compiler or it fails."""
    source = SHIM_SOURCE.read_bytes()
    target = Path(tempfile.gettempdir()) / (
        f"uml-xstate-shim-{hashlib.sha256(source).hexdigest()[:12]}.so")
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler to build tests/uml_xstate_shim.c (apt-get install gcc)")
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial),
                            str(SHIM_SOURCE), "-ldl"], capture_output=True, text=True)
    if built.returncode != 0:
        raise OSError(f"cannot build {SHIM_SOURCE.name}: {built.stderr.strip()[:300]}")
    partial.replace(target)
    return target


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # UML runs as many host processes as the guest has address spaces: kill them all.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _check_path(path: Path) -> str:
    text = str(path)
    # Boot parameters are split at spaces and UML_RW at colons.
    if any(ch in text for ch in " :\t\n") or not path.is_absolute():
        raise ValueError(f"UML paths must be absolute, without spaces or colons: {text!r}")
    return text


def run_in_uml(argv: Sequence[str], *, rw: Sequence[Path] = (),
               env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT,
               timeout_s: float = 300.0, mem: str = "1G") -> UmlResult:
    """Boot UML, run `argv` in it as root, power off; the job's exit code and output.

    `rw`: host folders (existing) the job may write, mounted at the same paths. `env` is
    added to a minimal environment (PATH with this interpreter's bin folder first, HOME and
    TMPDIR on the guest's tmpfs). The guest is killed after `timeout_s` + HALT_GRACE_S
    whatever happens; the job itself after `timeout_s`.
    """
    kernel = shutil.which(KERNEL)
    if kernel is None:
        raise FileNotFoundError(f"{KERNEL} not found (Debian: apt-get install user-mode-linux)")
    job = Path(tempfile.mkdtemp(prefix="uml-job-", dir=_job_parent()))
    try:
        bin_dir = str(Path(sys.executable).parent)
        variables = {
            "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/tmp/home", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
            "VIRTUAL_ENV": str(Path(sys.executable).parent.parent), "LANG": "C.UTF-8",
            **(env or {}),
        }
        lines = ["mkdir -p /tmp/home", f"cd {shlex.quote(str(cwd))}"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
        lines.append(f"exec {shlex.join(argv)}")
        (job / "run.sh").write_text("\n".join(lines) + "\n")
        rw_paths = [_check_path(job), *(_check_path(Path(p).resolve()) for p in rw)]
        modules = [_check_path(p) for p in module_paths()]
        cmdline = [
            kernel, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={_check_path(INIT_SCRIPT)}", "con=null", "con0=null,fd:1",
            # Its control socket in the job folder (removed below), not ~/.uml.
            f"uml_dir={job}",
            f"UML_JOB={job}", f"UML_RW={':'.join(rw_paths)}", f"UML_MODULES={':'.join(modules)}",
            f"UML_TIMEOUT={int(timeout_s)}",
        ]
        host_env = dict(os.environ)
        if host_has_avx512():
            host_env["LD_PRELOAD"] = str(xstate_shim())
        started = time.monotonic()
        # Its own session, so a timeout kills every host process of the guest.
        proc = subprocess.Popen(cmdline, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=tempfile.gettempdir(), env=host_env)
        try:
            console, _ = proc.communicate(timeout=timeout_s + HALT_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            console = proc.stdout.read() if proc.stdout else b""
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            # Helpers left behind by a guest that exited uncleanly.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        seconds = time.monotonic() - started
        code_file = job / "exit_code"
        code_text = code_file.read_text().strip() if code_file.exists() else ""
        output_file = job / "output"
        return UmlResult(
            returncode=int(code_text) if code_text.lstrip("-").isdigit() else -1,
            output=output_file.read_text(errors="replace") if output_file.exists() else "",
            console=console.decode(errors="replace"), seconds=seconds)
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _job_parent() -> str:
    # The job folder is mounted in the guest by path: no spaces or colons in it.
    parent = tempfile.gettempdir()
    return parent if " " not in parent and ":" not in parent else "/tmp"


@functools.cache
def uml_problem() -> str | None:
    """None when a UML guest boots and runs a job here; else why not (one line)."""
    if os.geteuid() != 0:
        return ("needs root (to install UML and to create the benchpg user on the host, "
                "which the read-only guest cannot)")
    if shutil.which(KERNEL) is None:
        return f"{KERNEL} not found (Debian: apt-get install user-mode-linux kmod)"
    missing = [str(p) for p in module_paths() if not p.exists()] or (
        [] if modules_dir() else [f"{MODULES_ROOT}/<version>/kernel"])
    if missing:
        return f"UML kernel modules missing: {', '.join(missing)}"
    if shutil.which("insmod") is None:
        return "insmod not found (Debian: apt-get install kmod)"
    try:
        result = run_in_uml(["true"], timeout_s=60)
    except OSError as exc:
        return f"cannot start {KERNEL}: {exc}"
    if result.returncode != 0:
        tail = " | ".join(result.console.strip().splitlines()[-3:])[-300:]
        return f"a UML guest did not run a job (exit {result.returncode}): {tail}"
    return None
