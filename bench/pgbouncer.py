"""PgBouncer, when a variant declares `[pgbouncer]`: one process per cell in front of the
harness's PostgreSQL, configured from the variant, stopped with the cell.

Taken, not written: the binary is Debian's `pgbouncer` package (nox installs it where root
and apt-get exist) or the one in `--pgbouncer-bin DIR`. Like PostgreSQL it runs as the
unprivileged user `benchpg` when we are root (PgBouncer refuses root too), from a folder
in the cluster's cache (`<cache>/<cluster slot>.pgbouncer/`) holding its ini, its auth
file and its pid file; a PgBouncer left by a killed bench process is found by that pid
file and stopped before the next one starts.

Authentication is scram-sha-256 on both sides, as PostgreSQL's own: the auth file holds
the role's SCRAM secret read from pg_authid (not the password), which PgBouncer also uses
to log in to PostgreSQL on the client's behalf, so a connection costs the same round
trips as a direct one.

PgBouncer sits beside PostgreSQL (the usual place for a shared pooler): the app reaches it
through the cell's latency, and it reaches PostgreSQL directly.

Connections are counted from PgBouncer's sockets (psutil), not with `SHOW POOLS` on its
admin console, so counting never takes a client slot: "client" connections are those
accepted on its listening port, "server" connections those it opened to PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from bench import pg_install
from bench.net import free_port, is_listening
from bench.processes import stop_process

START_TIMEOUT_S = 15.0
DEFAULT_LOCATIONS = (Path("/usr/sbin"), Path("/usr/bin"), Path("/usr/local/bin"),
                     Path("/usr/local/sbin"))
# The pool modes Django can run under: statement mode forbids multi-statement
# transactions, which Django's atomic blocks (and its migrations) open.
POOL_MODES = ("session", "transaction")


class PgBouncerError(Exception):
    """PgBouncer could not be found or started; one line for the user."""


@dataclass(frozen=True)
class PgBouncerSettings:
    """A variant's `[pgbouncer]` table."""

    pool_mode: str = "transaction"
    default_pool_size: int = 20
    max_client_conn: int = 1000
    reserve_pool_size: int = 0

    @property
    def max_server_connections(self) -> int:
        """The most PostgreSQL connections it opens (to the one database and user)."""
        return self.default_pool_size + self.reserve_pool_size

    def as_json(self) -> dict[str, Any]:
        return {"pool_mode": self.pool_mode, "default_pool_size": self.default_pool_size,
                "max_client_conn": self.max_client_conn, "reserve": self.reserve_pool_size}


def find_binary(bin_dir: Path | None = None, search: str | None = None) -> Path:
    """The pgbouncer program: in `bin_dir` when given, else on PATH (`search` replaces it)
    or where Debian puts it; a PgBouncerError says how to get one."""
    if bin_dir is not None:
        program = bin_dir / "pgbouncer"
        if not (program.is_file() and os.access(program, os.X_OK)):
            raise PgBouncerError(f"{bin_dir} holds no pgbouncer program; on Debian "
                                 "apt-get install pgbouncer (it lands in /usr/sbin)")
        return program
    path = os.environ.get("PATH", "") if search is None else search
    found = shutil.which("pgbouncer", path=os.pathsep.join(
        [path, *([] if search is not None else map(str, DEFAULT_LOCATIONS))]))
    if found is None:
        raise PgBouncerError("no pgbouncer program: apt-get install pgbouncer (nox -s bench "
                             "does it as root), or give --pgbouncer-bin DIR")
    return Path(found)


def program_version(program: Path) -> str:
    """'PgBouncer 1.18.0' (the first line of --version), or '?'."""
    out = subprocess.run([str(program), "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else "?"


def config_text(settings: PgBouncerSettings, listen_host: str, listen_port: int,
                pg_host: str, pg_port: int, auth_file: Path, pid_file: Path) -> str:
    """pgbouncer.ini for these settings: every database of the cluster, one pool each."""
    return "\n".join([
        "[databases]",
        f"* = host={pg_host} port={pg_port}",
        "",
        "[pgbouncer]",
        f"listen_addr = {listen_host}",
        f"listen_port = {listen_port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {auth_file}",
        f"pidfile = {pid_file}",
        f"pool_mode = {settings.pool_mode}",
        f"default_pool_size = {settings.default_pool_size}",
        "min_pool_size = 0",
        f"reserve_pool_size = {settings.reserve_pool_size}",
        # Reserve connections open after a client has waited this long (seconds).
        "reserve_pool_timeout = 1",
        f"max_client_conn = {settings.max_client_conn}",
        # Clients queue for a server connection without a limit of PgBouncer's own: a
        # request that waits too long is the load generator's timeout, as without it.
        "query_wait_timeout = 0",
        "server_reset_query = DISCARD ALL" if settings.pool_mode == "session"
        else "server_reset_query =",
        "ignore_startup_parameters = extra_float_digits,options",
        "log_connections = 0",
        "log_disconnections = 0",
        "log_pooler_errors = 1",
        "stats_period = 60",
        "",
    ])


def _client_ip(listen_host: str) -> str:
    return listen_host.split(",")[0].strip()


class PgBouncer:
    """One PgBouncer process for a cell; see the module docstring."""

    def __init__(self, program: Path, folder: Path) -> None:
        self.program = program
        self.folder = folder
        self.as_root = os.geteuid() == 0
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.pg_port: int | None = None
        self.settings: PgBouncerSettings | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / "pgbouncer.log"

    @property
    def pid_file(self) -> Path:
        return self.folder / "pgbouncer.pid"

    def start(self, settings: PgBouncerSettings, pg_host: str, pg_port: int, db_user: str,
              scram_secret: str, listen_host: str = "127.0.0.1") -> None:
        """Start in front of PostgreSQL at pg_host:pg_port; returns once it accepts TCP."""
        self.stop()
        self._stop_stale()
        self.folder.mkdir(parents=True, exist_ok=True)
        run_as = pg_install.as_pg_user() if self.as_root else {}
        if self.as_root:
            user = pg_install.ensure_os_user()
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.folder.chmod(0o700)
        auth_file = self.folder / "userlist.txt"
        self._write_private(auth_file, f'"{db_user}" "{scram_secret}"\n')
        self.host = _client_ip(listen_host)
        self.port = free_port(self.host)
        self.pg_port = pg_port
        self.settings = settings
        ini = self.folder / "pgbouncer.ini"
        self._write_private(ini, config_text(settings, listen_host, self.port, pg_host, pg_port,
                                             auth_file, self.pid_file))
        log: IO[bytes] = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen([str(self.program), str(ini)], stdout=log,
                                          stderr=log, stdin=subprocess.DEVNULL,
                                          start_new_session=True, **run_as)
        finally:
            log.close()
        self._wait_ready()

    def _write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if self.as_root:
            user = pg_install.ensure_os_user()
            os.chown(path, user.pw_uid, user.pw_gid)

    def _wait_ready(self) -> None:
        assert self.port is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise PgBouncerError(f"pgbouncer exited at start: {self.log_tail()}")
            if is_listening(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise PgBouncerError(f"pgbouncer not listening on {self.host}:{self.port} after "
                             f"{START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def _stop_stale(self) -> None:
        """A PgBouncer of a killed bench process, named by our pid file: stop it."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            proc = psutil.Process(pid)
            if proc.name() == "pgbouncer" and str(self.folder / "pgbouncer.ini") in \
                    proc.cmdline():
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except psutil.TimeoutExpired:
                    proc.kill()
        self.pid_file.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        return [self._proc.pid] if self.running and self._proc else []

    def connections(self) -> tuple[int, int]:
        """(client connections accepted, server connections to PostgreSQL) now."""
        if not self.running or self._proc is None:
            return 0, 0
        try:
            sockets = psutil.Process(self._proc.pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0, 0
        clients = servers = 0
        for sock in sockets:
            if sock.status != psutil.CONN_ESTABLISHED or not sock.raddr:
                continue
            if sock.laddr and sock.laddr.port == self.port:
                clients += 1
            elif sock.raddr.port == self.pg_port:
                servers += 1
        return clients, servers

    def crashed(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"PgBouncer exited during the load: {self.log_tail(3)}"
        return None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").strip()
                              .splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown), SIGKILL after 5 s; files removed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return  # the pid file, if any, is another process's: _stop_stale's to judge
        stop_process(proc, 5)
        (self.folder / "userlist.txt").unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
