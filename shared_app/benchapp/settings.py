"""Settings of the shared app, read from the environment only.

The app does not know it is benchmarked: every deployment choice (database, pool,
CONN_MAX_AGE, which views) arrives as an environment variable; see
docs/architecture.md for the list. Production-like defaults; the study's own settings
(DEBUG on, SQL logged to the console) are an option (DJANGO_STUDY_LOGGING=1).
"""

from __future__ import annotations

import json
import math
import os

from django.core.exceptions import ImproperlyConfigured


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be 0 or 1, got {raw!r}")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ImproperlyConfigured(f"{name} must be a finite number >= 0, got {raw!r}")
    return value


def _pool_options(raw: str) -> dict[str, int | float] | bool:
    if raw in {"", "0", "false"}:
        return False
    try:
        options = json.loads(raw)
    except json.JSONDecodeError:
        raise ImproperlyConfigured(f"DB_POOL must be empty or a JSON object, got {raw!r}") from None
    if not isinstance(options, dict):
        raise ImproperlyConfigured("DB_POOL must be a JSON object such as {\"max_size\": 20}")
    return options


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # No default secret in code: the harness generates a random one per run.
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set (the harness sets a random one)")

STUDY_LOGGING = _flag("DJANGO_STUDY_LOGGING")
DEBUG = _flag("DJANGO_DEBUG") or STUDY_LOGGING
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
    if h.strip()
]

INSTALLED_APPS = ["posts"]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "posts.middleware.JsonErrorMiddleware",
]

ROOT_URLCONF = "benchapp.urls"
WSGI_APPLICATION = "benchapp.wsgi.application"
ASGI_APPLICATION = "benchapp.asgi.application"

_pool = _pool_options(os.environ.get("DB_POOL", ""))
_conn_max_age = _int("DB_CONN_MAX_AGE", 0)
if _pool and _conn_max_age:
    raise ImproperlyConfigured("Django's connection pool requires DB_CONN_MAX_AGE=0")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": _int("DB_PORT", 5432),
        "NAME": os.environ.get("DB_NAME", "posts"),
        "USER": os.environ.get("DB_USER", "bench"),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "CONN_MAX_AGE": _conn_max_age,
        # Behind a pooler in transaction mode (PgBouncer), as Django's docs require: the
        # next transaction may run on another server connection, without the cursor.
        "DISABLE_SERVER_SIDE_CURSORS": _flag("DB_DISABLE_SERVER_SIDE_CURSORS"),
        "OPTIONS": {"pool": _pool} if _pool else {},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Which flavour of the views the URLconf mounts: sync | async | native.
POSTS_VIEWS = os.environ.get("POSTS_VIEWS", "sync")
if POSTS_VIEWS not in {"sync", "async", "native"}:
    raise ImproperlyConfigured(f"POSTS_VIEWS must be sync, async or native, got {POSTS_VIEWS!r}")
POSTS_CPU_LOOP = _int("POSTS_CPU_LOOP", 10**7)
# > 0: cpu/ runs for this many ms of its thread's CPU time, whatever the loop (and says how
# many turns that was); 0: the fixed POSTS_CPU_LOOP, as the study.
POSTS_CPU_MS = _float("POSTS_CPU_MS", 0.0)
POSTS_FIELD_MAX = _int("POSTS_FIELD_MAX", 10_000)

if STUDY_LOGGING:
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "root": {"handlers": ["console"], "level": "DEBUG"},
    }
else:
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "loggers": {"django": {"handlers": ["console"], "level": "WARNING"}},
    }
