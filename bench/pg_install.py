"""Where PostgreSQL's binaries come from and which OS user runs them.

The `pgserver` wheel's binaries (PostgreSQL 16) unless `--pg-bin` names a folder. As root,
PostgreSQL refuses to run, so every PostgreSQL binary runs as the unprivileged user
`benchpg` (created on first use), from a copy of the binaries when it cannot read them
where they are. `bench/postgres.py` runs the cluster with what this module provides.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

PG_OS_USER = "benchpg"


class PostgresError(Exception):
    """PostgreSQL could not be found, started or prepared; one line for the user."""


def default_pg_bin() -> Path:
    # Located, not imported: importing pgserver pulls in platformdirs and warns.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.origin:
        raise PostgresError("no PostgreSQL binaries: pip install pgserver, or give --pg-bin DIR "
                            "(e.g. /usr/lib/postgresql/15/bin)")
    return Path(spec.origin).parent / "pginstall" / "bin"


def check_pg_bin(pg_bin: Path) -> Path:
    """`pg_bin` if it holds PostgreSQL's binaries, else a PostgresError saying where to look."""
    missing = [b for b in ("initdb", "postgres") if not (pg_bin / b).is_file()]
    if missing:
        raise PostgresError(f"{pg_bin} holds no PostgreSQL binaries ({', '.join(missing)} "
                            "missing); on Debian try /usr/lib/postgresql/15/bin, or pip install "
                            "pgserver and omit --pg-bin")
    return pg_bin


def readable_by_all(path: Path) -> bool:
    """True when every folder up to `path` lets other users in (e.g. not under /root)."""
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def ensure_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run([useradd, "--system", "--no-create-home", "--shell",
                             "/usr/sbin/nologin", PG_OS_USER], capture_output=True, text=True)
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise PostgresError(f"cannot create the user {PG_OS_USER} to run PostgreSQL as "
                            f"(PostgreSQL refuses root): {result.stderr.strip()}")
    return pwd.getpwnam(PG_OS_USER)


def as_pg_user() -> dict[str, Any]:
    """subprocess keyword arguments that run a command as PG_OS_USER (created if needed)."""
    user = ensure_os_user()
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def readable_copy(source_bin: Path, cache_dir: Path) -> Path:
    """A bin folder PG_OS_USER can execute: `source_bin`, or a copy of its install in
    `cache_dir` when a folder above it shuts other users out (e.g. a venv under /root)."""
    if readable_by_all(source_bin):
        return source_bin
    # pgserver's binaries find their libraries at $ORIGIN/../../../pgserver.libs:
    # copy <pkg>/pginstall and its sibling pgserver.libs with the same layout.
    install = source_bin.parent
    stamp = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:10]
    target_root = cache_dir / f"pgbin-{stamp}"
    target = target_root / install.parent.name / install.name
    if not (target / "bin" / "postgres").is_file():
        tmp = cache_dir / f".pgbin-{stamp}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install, tmp / install.parent.name / install.name, symlinks=True)
        libs = install.parent.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        for root, dirs, files in os.walk(tmp):
            for name in dirs + files:
                p = Path(root) / name
                if not p.is_symlink():
                    mode = p.stat().st_mode
                    p.chmod(mode | (0o005 if p.is_dir() or mode & 0o100 else 0o004))
        tmp.chmod(0o755)
        with contextlib.suppress(OSError):
            tmp.rename(target_root)
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "bin"
