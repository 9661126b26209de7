"""The lab's entry points: bench (main job), tests, lint, report, compare, bench_docker."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def install_bench(session: nox.Session, *extras: str) -> None:
    """The project, plus every server the variants require (servers/*/variant.toml)."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target)
    # run_install: also under `nox --install-only`, which skips session.run
    requires = session.run_install("python", "-m", "bench", "requirements", silent=True)
    if isinstance(requires, str) and requires.split():
        session.install(*requires.split())


def apt_install(session: nox.Session, *packages: str) -> None:
    """Debian packages, as root where apt-get exists; best effort (tests skip without)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env, success_codes=[0, 100])
    session.run("apt-get", "install", "-y", "-qq", *packages, external=True, env=env,
                success_codes=[0, 100])


def install_chromium(session: nox.Session) -> None:
    """The report test opens report.html in headless Chromium (Debian's package)."""
    if not shutil.which("chromium"):
        apt_install(session, "chromium")


def install_pgbouncer(session: nox.Session) -> None:
    """Variants with [pgbouncer] (and their tests) run Debian's pgbouncer; without it they
    are skipped. Only the program is wanted: a service the package may start is stopped."""
    if shutil.which("pgbouncer") or os.path.exists("/usr/sbin/pgbouncer"):
        return
    apt_install(session, "pgbouncer")
    if os.geteuid() == 0 and shutil.which("service"):
        session.run("service", "pgbouncer", "stop", external=True, success_codes=[0, 1, 3],
                    silent=True)


def install_uml(session: nox.Session) -> None:
    """tests/test_uml_netem.py runs the netem backend inside User-Mode Linux (tests/uml.py):
    the UML kernel with its sch_netem and veth modules, insmod, ip and tc, and a C compiler
    for the AVX-512 shim (tests/uml_xstate_shim.c)."""
    if not all(shutil.which(tool) for tool in ("linux.uml", "insmod", "tc", "cc")):
        apt_install(session, "user-mode-linux", "kmod", "iproute2", "gcc")


def install_cc(session: nox.Session) -> None:
    """The latency proxy is a C program (bench/latency/delay_relay.c) built on first use;
    without a compiler the harness runs its Python twin, which costs a cell more."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        apt_install(session, "gcc")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark matrix, then the report. Arguments after -- go to `bench run`."""
    install_bench(session)
    install_pgbouncer(session)
    install_cc(session)
    session.run("python", "-m", "bench", "run", *session.posargs)


@nox.session
def bench_docker(session: nox.Session) -> None:
    """The same matrix as containers (docker/compose.yaml): nox -s bench_docker -- [bench's
    options]. Needs a Docker engine; images install from a host-built wheelhouse."""
    install_bench(session)
    session.run("python", "-m", "bench", "run", "--docker", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit tests and small-scale integration tests on real components."""
    install_bench(session, "test")
    install_chromium(session)
    install_pgbouncer(session)
    install_uml(session)
    # --durations: CI's log names the slowest tests (the suite's time is a goal, issue 12).
    # Two passes: the tests on two xdist workers (-n 2 --dist loadgroup: each xdist_group,
    # e.g. the Docker tests or the local `bench run`s, stays on one worker, in order; the
    # units go out in collection order, the two longest first: tests/conftest.py), then
    # the tests marked `alone` (timings of milliseconds, a statistical stop, throughput
    # ratios) with nothing beside them. Arguments after -- run one plain pytest instead.
    if session.posargs:
        session.run("python", "-m", "pytest", *session.posargs)
        return
    session.run("python", "-m", "pytest", "-q", "--durations=15", "-n", "2", "--dist",
                "loadgroup", "--no-loadscope-reorder", "-m", "not alone")
    session.run("python", "-m", "pytest", "-q", "--durations=5", "-m", "alone")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy."""
    install_bench(session, "lint")
    session.run("ruff", "check", ".")
    session.run("mypy", "bench", "shared_app/benchapp", "shared_app/posts")


@nox.session
def report(session: nox.Session) -> None:
    """Build report.md/report.html of a results folder: nox -s report -- results/NAME."""
    install_bench(session)
    if not session.posargs:
        session.error("give the results folder: nox -s report -- results/NAME")
    session.run("python", "-m", "bench", "report", *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """Compare two runs: nox -s compare -- results/BASE results/NEW [--min-change 5%]
    [--fail-on-regression] [--out DIR]. Exit code 1 on a regression when asked."""
    install_bench(session)
    if not session.posargs:
        session.error("give two results folders: nox -s compare -- results/BASE results/NEW")
    session.run("python", "-m", "bench", "compare", *session.posargs)
