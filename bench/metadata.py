"""What a run ran on: machine, versions, commit (apart from the code that measures)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

import psutil

from bench.paths import repo_root

# The servers, and the event loops and HTTP parsers they can run on (uvicorn's "auto" and
# gunicorn's "auto" pick by what is installed, so the versions say what was there to pick).
PACKAGES = ("django", "asgiref", "gunicorn", "gunicorn-h1c", "uvicorn", "uvicorn-worker",
            "hypercorn", "daphne", "twisted", "granian", "gevent", "greenlet", "uvloop",
            "httptools", "h11", "h2", "locust", "psycopg", "psycopg-binary", "psycopg-pool",
            "psutil", "numpy", "scipy", "matplotlib", "jinja2", "pgserver")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state() -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout, or (None, False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=repo_root(), check=True, capture_output=True, text=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit, bool(status.strip())
