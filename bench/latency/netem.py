"""Latency by netem: the faithful backend (needs root and a kernel with sch_netem).

The server runs in a network namespace of its own, joined to the host by a veth pair;
`tc qdisc ... netem delay L` on the namespace's end delays every packet the server sends,
to PostgreSQL and to the clients alike (as the study's `tc netem` on the server
container's eth0). PostgreSQL and Locust stay in the host namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess

from bench.latency.base import LatencyError, LatencySession

NETNS_PREFIX = "asyncdj-"
# Packets netem may hold at once: at L = 200 ms and thousands of requests/s the default
# (1000) would drop packets, which is loss, not latency.
NETEM_LIMIT = 100_000
SERVER_PORT = 8000  # a fresh namespace has every port free
_counter = itertools.count(1)


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise LatencyError(f"`{' '.join(cmd)}` failed: "
                           f"{(result.stderr or result.stdout).strip()[:300]}")
    return result


def netem_qdisc_command(netns: str | None, dev: str, latency_ms: int) -> list[str]:
    """`tc qdisc add ... netem delay L` on `dev`, in namespace `netns` (None: the current)."""
    where = ["-n", netns] if netns else []
    return ["tc", *where, "qdisc", "add", "dev", dev, "root", "netem",
            "delay", f"{latency_ms}ms", "limit", str(NETEM_LIMIT)]


class Topology:
    """Names and addresses of one namespace + veth pair (pure data, unit-tested)."""

    def __init__(self, owner_pid: int, index: int) -> None:
        self.netns = f"{NETNS_PREFIX}{owner_pid}-{index}"
        # Interface names are at most 15 characters.
        self.host_dev = f"ad{owner_pid}h{index % 100}"
        self.ns_dev = f"ad{owner_pid}n{index % 100}"
        slot = (owner_pid * 64 + index) % 16384  # a /30 out of 10.213.0.0/16
        base = slot * 4
        self.host_ip = f"10.213.{base // 256}.{base % 256 + 1}"
        self.ns_ip = f"10.213.{base // 256}.{base % 256 + 2}"

    def setup_commands(self, latency_ms: int) -> list[list[str]]:
        cmds = [
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev],
            ["ip", "link", "set", self.ns_dev, "netns", self.netns],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev],
            ["ip", "link", "set", self.host_dev, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_dev],
            ["ip", "-n", self.netns, "link", "set", self.ns_dev, "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ]
        if latency_ms > 0:
            cmds.append(netem_qdisc_command(self.netns, self.ns_dev, latency_ms))
        return cmds

    def teardown_commands(self) -> list[list[str]]:
        # Deleting the namespace deletes its veth end, and with it the host's end.
        return [["ip", "netns", "delete", self.netns], ["ip", "link", "delete", self.host_dev]]


def remove_stale_namespaces() -> list[str]:
    """Namespaces left by a harness process that no longer exists (killed by SIGKILL)."""
    if not shutil.which("ip"):
        return []
    listed = _run(["ip", "netns", "list"], check=False).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{re.escape(NETNS_PREFIX)}(\d+)-\d+", name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _run(["ip", "netns", "delete", name], check=False)
            removed.append(name)
        except PermissionError:
            continue
    return removed


def probe() -> str | None:
    """None when netem works here; else why not (one line)."""
    if os.geteuid() != 0:
        return "netem needs root (network namespaces and tc)"
    missing = [tool for tool in ("ip", "tc") if not shutil.which(tool)]
    if missing:
        return f"{' and '.join(missing)} not found (Debian: apt-get install iproute2)"
    netns = f"{NETNS_PREFIX}probe{os.getpid()}"
    try:
        made = _run(["ip", "netns", "add", netns], check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()[:200]}"
        _run(["ip", "-n", netns, "link", "set", "lo", "up"], check=False)
        tc = _run(["tc", "-n", netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                   "1ms"], check=False)
        if tc.returncode != 0:
            text = (tc.stderr or tc.stdout).strip().splitlines()
            detail = text[0] if text else f"tc exited {tc.returncode}"
            if "unknown" in detail.lower():
                return f"kernel has no sch_netem (tc: {detail})"
            return f"tc netem failed: {detail}"
        return None
    finally:
        _run(["ip", "netns", "delete", netns], check=False)


class NetemSession(LatencySession):
    backend = "netem"

    def __init__(self, latency_ms: int) -> None:
        super().__init__(latency_ms)
        remove_stale_namespaces()
        self.topology = Topology(os.getpid(), next(_counter))
        # Loopback first: the harness's own connections (readiness, template, clones) go
        # there, where initdb's pg_hba lets them in; the server dials the veth address.
        self.pg_listen_host = f"127.0.0.1,{self.topology.host_ip}"
        self.server_bind_host = self.topology.ns_ip
        self.command_prefix = ["ip", "netns", "exec", self.topology.netns]
        self._up = True
        try:
            for cmd in self.topology.setup_commands(latency_ms):
                _run(cmd)
        except LatencyError:
            self.close()
            raise

    def server_port(self) -> int:
        return SERVER_PORT

    def db_endpoint(self, pg_host: str, pg_port: int) -> tuple[str, int]:
        # PostgreSQL listens on the host's end of the veth pair.
        return self.topology.host_ip, pg_port

    def client_endpoint(self, server_port: int) -> tuple[str, int]:
        return self.topology.ns_ip, server_port

    def close(self) -> None:
        if not self._up:
            return
        self._up = False
        for cmd in self.topology.teardown_commands():
            with contextlib.suppress(LatencyError, OSError, subprocess.SubprocessError):
                _run(cmd, check=False)
