"""Which program the latency proxy runs: the C relay (delay_relay.c), built here with the
machine's C compiler, or the Python proxy (delay_proxy.py) where there is none.

The two take the same arguments, print the same ready line and behave alike (the tests run
both); the C one adds a third of the time to a request (delay_relay.c says why that
matters).
It is compiled once per version of its source, into the cache (bench/postgres.py
cache_root), and kept there. BENCH_PROXY_RELAY=python (or c) picks one: to compare them
(benchmarks/proxy_overhead.py --requests --relay python), or to insist on the C one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.latency.base import LatencyError

SOURCE = Path(__file__).with_name("delay_relay.c")
#: The Python proxy, as a module to run with -m.
PYTHON_PROGRAM = "bench.latency.delay_proxy"
#: "c" or "python" to choose; unset or empty: the C relay where it builds.
RELAY_ENV = "BENCH_PROXY_RELAY"
RELAYS = ("c", "python")
BUILD_TIMEOUT_S = 120.0


class RelayError(LatencyError):
    """The relay asked for (BENCH_PROXY_RELAY) cannot run here."""


@dataclass(frozen=True)
class Relay:
    name: str  # "c" or "python"
    #: The C relay's binary; None for the Python proxy.
    binary: Path | None
    #: Why this one: "built with cc", or why the C relay is not used.
    why: str

    @property
    def command(self) -> list[str]:
        """What starts it, before its arguments."""
        return ([str(self.binary)] if self.binary is not None
                else [sys.executable, "-m", PYTHON_PROGRAM])


def compiler() -> str | None:
    """The C compiler: $CC, else cc or gcc on PATH."""
    if cc := os.environ.get("CC"):
        return shutil.which(cc)
    return shutil.which("cc") or shutil.which("gcc")


@functools.cache
def build() -> tuple[Path | None, str]:
    """The C relay's binary (compiled on first use, then cached), or None and why not."""
    from bench.postgres import cache_root

    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or $CC) to build bench/latency/delay_relay.c"
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + cc.encode()).hexdigest()[:12]
    folder = cache_root() / "relay"
    binary = folder / f"delay_relay-{digest}"
    if os.access(binary, os.X_OK):
        return binary, f"built with {Path(cc).name}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Built beside its final name and renamed: parallel runs never see half a binary.
        fd, partial = tempfile.mkstemp(prefix=".delay_relay-", dir=folder)
        os.close(fd)
        result = subprocess.run([cc, "-O2", "-o", partial, str(SOURCE), "-lm"],
                                capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            Path(partial).unlink(missing_ok=True)
            last = (result.stderr.strip().splitlines() or ["?"])[-1]
            return None, f"{Path(cc).name} could not build delay_relay.c: {last[:200]}"
        os.chmod(partial, 0o700)  # run by this user only
        os.replace(partial, binary)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"could not build delay_relay.c in {folder}: {exc}"
    return binary, f"built with {Path(cc).name}"


def choose(asked: str | None = None) -> Relay:
    """The relay to run: `asked` ("c" or "python"), else BENCH_PROXY_RELAY, else the C one
    where it builds. Raises RelayError for an unknown name, or for "c" where it cannot
    build."""
    name = asked if asked is not None else os.environ.get(RELAY_ENV, "")
    if name not in ("", *RELAYS):
        raise RelayError(f"{RELAY_ENV}={name!r}: expected one of {', '.join(RELAYS)}")
    if name == "python":
        return Relay("python", None, f"asked for ({RELAY_ENV}=python)")
    binary, why = build()
    if binary is not None:
        return Relay("c", binary, why)
    if name == "c":
        raise RelayError(f"{RELAY_ENV}=c, but {why}")
    return Relay("python", None, why)
