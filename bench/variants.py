"""A deployment is data: servers/<name>/variant.toml, discovered and validated here.

Nothing else in the harness knows a variant by name; adding a folder adds a variant.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from bench.paths import servers_dir
from bench.pgbouncer import POOL_MODES, PgBouncerSettings

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
INTERFACES = ("asgi", "wsgi")
VIEWS = ("sync", "async", "native")
PLACEHOLDERS = {"host", "port"}
TOP_KEYS = {"title", "study_label", "interface", "views", "requires", "command", "description",
            "default_run", "postgres", "django", "pgbouncer"}
POSTGRES_KEYS = {"max_connections"}
DJANGO_KEYS = {"conn_max_age", "pool", "study_logging"}
POOL_KEYS = {"min_size", "max_size", "timeout"}
PGBOUNCER_KEYS = {"pool_mode", "default_pool_size", "max_client_conn", "reserve"}
# PostgreSQL keeps this many connections for superusers (superuser_reserved_connections).
PG_RESERVED = 3


class VariantError(Exception):
    """A variant that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PoolSettings:
    min_size: int
    max_size: int
    timeout_s: float

    def as_json(self) -> str:
        return json.dumps(
            {"min_size": self.min_size, "max_size": self.max_size, "timeout": self.timeout_s}
        )


@dataclass(frozen=True)
class Variant:
    name: str
    folder: Path
    title: str
    interface: str
    views: str
    command: tuple[str, ...]
    requires: tuple[str, ...] = ()
    study_label: str | None = None
    description: str = ""
    max_connections: int = 100
    conn_max_age: int = 0
    pool: PoolSettings | None = None
    study_logging: bool = False
    pgbouncer: PgBouncerSettings | None = None
    # In the matrix when `bench run` gets no --variants (`--variants all` adds the rest):
    # keeps the default run near 30 minutes on two cores as variants are added.
    default_run: bool = True

    def server_command(self, host: str, port: int) -> list[str]:
        """The command with {host}/{port} filled; the program resolved in this environment."""
        args = [part.format(host=host, port=port) for part in self.command]
        args[0] = resolve_program(args[0])
        return args

    def app_env(self) -> dict[str, str]:
        """Environment for benchapp.settings that this variant implies."""
        return {
            "POSTS_VIEWS": self.views,
            "DB_CONN_MAX_AGE": str(self.conn_max_age),
            "DB_POOL": self.pool.as_json() if self.pool else "",
            "DJANGO_STUDY_LOGGING": "1" if self.study_logging else "0",
            # Django's docs: a pooler in transaction mode may hand each transaction another
            # server connection, where a server-side cursor does not exist.
            "DB_DISABLE_SERVER_SIDE_CURSORS": "1" if self.pgbouncer is not None
            and self.pgbouncer.pool_mode == "transaction" else "0",
        }

    def settings(self) -> dict[str, Any]:
        """What a cell records about the connection settings it ran with."""
        return {
            "pg_max_connections": self.max_connections,
            "conn_max_age": self.conn_max_age,
            "pool": None if self.pool is None else {
                "min_size": self.pool.min_size, "max_size": self.pool.max_size,
                "timeout_s": self.pool.timeout_s,
            },
            "pgbouncer": None if self.pgbouncer is None else self.pgbouncer.as_json(),
        }

    def with_overrides(
        self, max_connections: int | None = None, pool_max_size: int | None = None,
        conn_max_age: int | None = None,
    ) -> Variant:
        """A sweep combination: the same variant with other connection limits.

        A VariantError when the combination cannot run (CONN_MAX_AGE > 0 with Django's pool).
        """
        changed = self
        if conn_max_age is not None:
            if conn_max_age and self.pool is not None:
                raise VariantError(f"{self.name}: conn_max_age {conn_max_age} cannot run with "
                                   "django.pool (Django's pool requires conn_max_age 0)")
            changed = replace(changed, conn_max_age=conn_max_age)
        if max_connections is not None:
            changed = replace(changed, max_connections=max_connections)
        if pool_max_size is not None and changed.pool is not None:
            min_size = min(changed.pool.min_size, pool_max_size)
            changed = replace(
                changed, pool=replace(changed.pool, max_size=pool_max_size, min_size=min_size)
            )
        return changed


def resolve_program(program: str) -> str:
    """Prefer the program installed beside this Python (the bench venv) over PATH."""
    if "/" in program:
        return program
    beside = Path(sys.executable).parent / program
    if beside.exists():
        return str(beside)
    return shutil.which(program) or program


def _fail(path: Path, key: str, message: str) -> VariantError:
    return VariantError(f"{path}: key '{key}': {message}")


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path,
         prefix: str = "", required: bool = False, default: Any = None) -> Any:
    full = f"{prefix}{key}"
    if key not in data:
        if required:
            raise _fail(path, full, "is required")
        return default
    value = data[key]
    # bool is an int in Python; a TOML `true` is not a number of connections.
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _fail(path, full, f"must be a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(path, full, f"must be {names}, got {type(value).__name__} {value!r}")
    return value


def _check_unknown(data: dict[str, Any], allowed: set[str], path: Path, prefix: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise _fail(path, f"{prefix}{key}",
                        f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _choice(value: str, choices: tuple[str, ...], path: Path, key: str) -> str:
    if value not in choices:
        raise _fail(path, key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _command(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    command = _get(data, "command", list, path, required=True)
    if not command or not all(isinstance(part, str) and part for part in command):
        raise _fail(path, "command", "must be a non-empty list of non-empty strings")
    used: set[str] = set()
    for part in command:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(part) if f is not None}
        except ValueError as exc:
            raise _fail(path, "command", f"bad placeholder in {part!r}: {exc}") from None
        unknown = fields - PLACEHOLDERS
        if unknown:
            raise _fail(path, "command", f"unknown placeholder {{{sorted(unknown)[0]}}} "
                                         "(allowed: {host}, {port})")
        used |= fields
    if "port" not in used:
        raise _fail(path, "command", "must bind to {port} so the harness can reach the server")
    return tuple(command)


def _requires(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    requires = _get(data, "requires", list, path, default=[])
    for item in requires:
        if not isinstance(item, str):
            raise _fail(path, "requires", f"must be a list of strings, got {item!r}")
        try:
            Requirement(item)
        except InvalidRequirement as exc:
            raise _fail(path, "requires", f"{item!r} is not a valid requirement: {exc}") from None
    return tuple(requires)


def _pool(django: dict[str, Any], path: Path) -> PoolSettings | None:
    pool = _get(django, "pool", (bool, dict), path, prefix="django.", default=False)
    if pool is False:
        return None
    if pool is True:
        raise _fail(path, "django.pool", "must be false or a table {min_size, max_size, timeout}")
    _check_unknown(pool, POOL_KEYS, path, "django.pool.")
    max_size = _get(pool, "max_size", int, path, prefix="django.pool.", required=True)
    min_size = _get(pool, "min_size", int, path, prefix="django.pool.", default=min(4, max_size))
    timeout = _get(pool, "timeout", (int, float), path, prefix="django.pool.", default=10)
    if max_size < 1 or not 0 <= min_size <= max_size:
        raise _fail(path, "django.pool", "needs 0 <= min_size <= max_size and max_size >= 1")
    if timeout <= 0:
        raise _fail(path, "django.pool.timeout", "must be > 0 seconds")
    return PoolSettings(min_size=min_size, max_size=max_size, timeout_s=float(timeout))


def _pgbouncer(data: dict[str, Any], path: Path,
               max_connections: int) -> PgBouncerSettings | None:
    table = _get(data, "pgbouncer", dict, path)
    if table is None:
        return None
    _check_unknown(table, PGBOUNCER_KEYS, path, "pgbouncer.")
    prefix = "pgbouncer."
    settings = PgBouncerSettings(
        pool_mode=_choice(_get(table, "pool_mode", str, path, prefix, default="transaction"),
                          POOL_MODES, path, f"{prefix}pool_mode"),
        default_pool_size=_get(table, "default_pool_size", int, path, prefix, required=True),
        max_client_conn=_get(table, "max_client_conn", int, path, prefix, default=1000),
        reserve_pool_size=_get(table, "reserve", int, path, prefix, default=0),
    )
    if settings.default_pool_size < 1:
        raise _fail(path, f"{prefix}default_pool_size", "must be >= 1")
    if settings.max_client_conn < 1:
        raise _fail(path, f"{prefix}max_client_conn", "must be >= 1")
    if settings.reserve_pool_size < 0:
        raise _fail(path, f"{prefix}reserve", "must be >= 0")
    if settings.max_server_connections > max_connections - PG_RESERVED:
        raise _fail(path, f"{prefix}default_pool_size",
                    f"default_pool_size + reserve ({settings.max_server_connections}) must "
                    f"leave room under postgres.max_connections ({max_connections}, of which "
                    f"{PG_RESERVED} are kept for superusers)")
    return settings


def parse_variant(path: Path) -> Variant:
    """Read and validate one variant.toml."""
    name = path.parent.name
    if not NAME_RE.match(name):
        raise VariantError(f"{path.parent}: variant name {name!r} must be lowercase letters, "
                           "digits and _ (starting with a letter)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise VariantError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise VariantError(f"{path}: cannot read: {exc.strerror}") from None
    _check_unknown(data, TOP_KEYS, path)
    postgres = _get(data, "postgres", dict, path, default={})
    _check_unknown(postgres, POSTGRES_KEYS, path, "postgres.")
    django = _get(data, "django", dict, path, default={})
    _check_unknown(django, DJANGO_KEYS, path, "django.")
    max_connections = _get(postgres, "max_connections", int, path, "postgres.", default=100)
    if not 1 <= max_connections <= 10_000:
        raise _fail(path, "postgres.max_connections", "must be between 1 and 10000")
    conn_max_age = _get(django, "conn_max_age", int, path, "django.", default=0)
    if conn_max_age < 0:
        raise _fail(path, "django.conn_max_age", "must be >= 0")
    pool = _pool(django, path)
    if pool is not None and conn_max_age != 0:
        raise _fail(path, "django.conn_max_age", "must be 0 when django.pool is set "
                                                 "(Django's pool requires it)")
    title = _get(data, "title", str, path, required=True)
    return Variant(
        name=name,
        folder=path.parent,
        title=title,
        study_label=_get(data, "study_label", str, path),
        description=_get(data, "description", str, path, default=""),
        interface=_choice(_get(data, "interface", str, path, required=True), INTERFACES, path,
                          "interface"),
        views=_choice(_get(data, "views", str, path, required=True), VIEWS, path, "views"),
        requires=_requires(data, path),
        command=_command(data, path),
        max_connections=max_connections,
        conn_max_age=conn_max_age,
        pool=pool,
        study_logging=_get(django, "study_logging", bool, path, "django.", default=False),
        pgbouncer=_pgbouncer(data, path, max_connections),
        default_run=_get(data, "default_run", bool, path, default=True),
    )


def discover(folder: Path | None = None) -> dict[str, Variant]:
    """Every servers/<name>/variant.toml, validated, sorted by name."""
    root = folder or servers_dir()
    if not root.is_dir():
        raise VariantError(f"{root}: no servers folder")
    found = {}
    for toml_path in sorted(root.glob("*/variant.toml")):
        variant = parse_variant(toml_path)
        found[variant.name] = variant
    if not found:
        raise VariantError(f"{root}: no variant folders (servers/<name>/variant.toml)")
    return found


def select(variants: dict[str, Variant], names: list[str] | None) -> list[Variant]:
    """The variants named; the default run's (default_run = true) when None; every one
    for ["all"]. A VariantError lists the valid names."""
    if not names:
        return [v for v in variants.values() if v.default_run]
    if names == ["all"]:
        return list(variants.values())
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise VariantError(f"unknown variant {unknown[0]!r}; valid: all, {', '.join(variants)}")
    return [variants[n] for n in names]


def all_requirements(variants: list[Variant]) -> list[str]:
    """The union of the variants' `requires`, in first-seen order."""
    seen: dict[str, None] = {}
    for variant in variants:
        for req in variant.requires:
            seen.setdefault(req, None)
    return list(seen)
