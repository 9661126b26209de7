"""python -m bench {variants,requirements,serve,run,report,table,compare,db,load,
load-worker}.

User errors (a bad variant.toml, an unknown route, missing PostgreSQL binaries...) end
with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from bench.signals import signals_interrupt
from bench.verify import ROUTES


def _user_errors() -> tuple[type[Exception], ...]:
    """Every error class that means 'the user asked for something we cannot do'."""
    from bench.docker import DockerError
    from bench.latency import LatencyError
    from bench.load import LoadError
    from bench.pgbouncer import PgBouncerError
    from bench.postgres import PostgresError
    from bench.report import ReportError
    from bench.runner import RunError
    from bench.server import ServerError
    from bench.variants import VariantError
    from bench.verify import VerificationError

    return (VariantError, PostgresError, LatencyError, LoadError, RunError, ServerError,
            VerificationError, ReportError, DockerError, PgBouncerError)


def _int_list(minimum: int, what: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part.isdigit() or int(part) < minimum:
                raise argparse.ArgumentTypeError(
                    f"{what} must be integers >= {minimum} separated by commas, got {part!r}")
            values.append(int(part))
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{what}: a value is repeated in {text!r}")
        return values
    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1) such as 0.05 or 5%, "
                                         f"got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600_000:
        raise argparse.ArgumentTypeError(f"must be milliseconds > 0, got {text!r}")
    return value


def _milliseconds_or_zero(text: str) -> float:
    with contextlib.suppress(ValueError):
        if float(text) == 0:
            return 0.0
    return _milliseconds(text)


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {text!r}")
    return int(text)


def _url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise argparse.ArgumentTypeError(f"must be an http(s) URL such as "
                                         f"http://10.0.0.5:8000, got {text!r}")
    return text.rstrip("/")


def _column_name(text: str) -> str:
    import re

    if not re.fullmatch(r"[a-z0-9_+\-]+", text):
        raise argparse.ArgumentTypeError(f"must be lowercase letters, digits, _, + or -, "
                                         f"got {text!r}")
    return text


def _master(text: str) -> tuple[str, int]:
    from bench.load import LoadError, parse_master

    try:
        return parse_master(text)
    except LoadError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--master ")) from None


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expects a comma-separated list of names")
    return names


def _routes(text: str) -> list[str]:
    names = _names(text)
    for name in names:
        if name not in ROUTES:
            raise argparse.ArgumentTypeError(f"unknown route {name!r}; valid: {', '.join(ROUTES)}")
    return names


def _profile(text: str) -> str:
    from bench.load import available_profiles

    valid = available_profiles()
    if text not in valid:
        raise argparse.ArgumentTypeError(f"unknown profile {text!r}; valid: {', '.join(valid)}")
    return text


def _backend(text: str) -> str:
    from bench.latency.base import LatencyError, check_backend_name

    try:
        return check_backend_name(text)
    except LatencyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _results_folder(text: str) -> Path:
    path = Path(text)
    if not (path / "run.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a results folder (no run.json)")
    return path


def _pg_bin(text: str) -> Path:
    from bench.pg_install import PostgresError, check_pg_bin

    try:
        return check_pg_bin(Path(text))
    except PostgresError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pgbouncer_bin(text: str) -> Path:
    from bench.pgbouncer import PgBouncerError, find_binary

    try:
        return find_binary(Path(text)).parent
    except PgBouncerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_pg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pg-bin", type=_pg_bin, metavar="DIR",
                        help="PostgreSQL binaries to use (default: the pgserver wheel's)")
    parser.add_argument("--rows", type=_positive, default=1_000_000,
                        help="posts in the template database (default: 1000000, the study's)")
    parser.add_argument("--cpu-loop", type=_positive, default=None,
                        help="a fixed loop size for cpu/ (default for run: none, a request "
                             "runs for the profile's cpu_ms of CPU time, or the study's "
                             "10000000 turns when the profile has none; default elsewhere: "
                             "10000000)")


def _add_pgbouncer(parser: argparse.ArgumentParser, without: str) -> None:
    parser.add_argument("--pgbouncer-bin", type=_pgbouncer_bin, metavar="DIR",
                        help="folder holding the pgbouncer program, for variants that declare "
                             "[pgbouncer] (default: PATH, then /usr/sbin: Debian's package); "
                             f"without one {without}")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit code 2) instead of usage + error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # "--min-change -5%": read -5% as a (bad) value, not as an unknown option, so the
        # error says what is wrong with it (Python 3.13's argparse does this itself).
        self._negative_number_matcher = re.compile(r"^-\d+%?$|^-\d*\.\d+%?$")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bench",
        description="Asynchronize-Django: benchmark Django deployments (sync vs async, "
                    "servers, DB connection settings) as network latency grows.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("variants", help="list the discovered variants (servers/*/variant.toml)",
                   description="One line per variant: name, interface, views, title.")
    sub.add_parser("requirements", help="print the packages every variant requires",
                   description="The union of the variants' `requires`, one per line "
                               "(nox installs them into the bench environment).")

    serve = sub.add_parser("serve", help="start one variant with its PostgreSQL, until Ctrl-C",
                           description="Start PostgreSQL (the variant's max_connections, a "
                                       "fresh database from the template), run migrations, "
                                       "start the variant and print its URL. Ctrl-C stops all.")
    serve.add_argument("variant", help="variant name (see `python -m bench variants`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_positive, help="port to bind (default: a free one)")
    serve.add_argument("--external-db", action="store_true",
                       help="use the database named by DB_HOST/DB_PORT/DB_NAME/DB_USER/"
                            "DB_PASSWORD instead of starting one (Docker mode)")
    _add_pg(serve)
    serve.add_argument("--cpu-ms", type=_milliseconds_or_zero, default=0.0, metavar="MS",
                       help="each cpu/ request runs for MS of its thread's CPU time instead "
                            "of --cpu-loop's turns (default 0: the loop)")
    _add_pgbouncer(serve, "such a variant cannot be served")

    run = sub.add_parser("run", help="run the benchmark matrix",
                         description="Run every cell (variant x route x latency x repeat) and "
                                     "write results/<run>/ (see results/README.md).")
    run.add_argument("--variants", type=_names, metavar="A,B",
                     help="variants, or `all` (default: those with default_run = true; "
                          "`python -m bench variants` marks the others with -)")
    run.add_argument("--routes", type=_routes, default=list(ROUTES), metavar="R,R",
                     help=f"routes (default: {','.join(ROUTES)})")
    run.add_argument("--latencies", type=_int_list(0, "latencies"), default=[0, 100, 200],
                     metavar="MS,MS", help="added latency in ms (default: 0,100,200)")
    run.add_argument("--profile", type=_profile, default="quick",
                     help="load profile from load/profiles.toml (default: quick)")
    run.add_argument("--repeats", type=_positive, default=1,
                     help="repeats per cell, interleaved: every cell of repeat 1 in a shuffled "
                          "order, then of repeat 2, ... (default 1)")
    run.add_argument("--precision", type=_fraction, metavar="FRACTION",
                     help="stop a cell's load once its steady sRPS's 95%% CI half-width is at "
                          "most this fraction of the mean, e.g. 0.05 (default: the profile's; "
                          "0 holds the profile's maximum hold)")
    run.add_argument("--cpu-ms", type=_milliseconds, metavar="MS",
                     help="each cpu/ request runs for MS of its thread's CPU time, on any "
                          "machine (default: the profile's cpu_ms; --cpu-loop: a fixed loop "
                          "instead)")
    run.add_argument("--seed", type=_seed, help="seed of the shuffled cell order (default: "
                                                "random, recorded in run.json)")
    run.add_argument("--latency-backend", type=_backend, default="auto",
                     help="auto | netem | proxy | none (default: auto = netem where the kernel "
                          "has it, else proxy; the proxy leaves 0 ms cells direct)")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="results folder (default: results/<date-time>)")
    run.add_argument("--resume", type=_results_folder, metavar="DIR",
                     help="continue a run: keep finished cells, run the rest")
    run.add_argument("--load-processes", type=_positive, default=1,
                     help="Locust processes on this host (master/worker mode when > 1)")
    run.add_argument("--load-workers", type=_positive, metavar="N",
                     help="load from other hosts: each cell's Locust is a master that waits "
                          "(up to 60 s) for N workers, started on the load hosts with "
                          "`python -m bench load-worker --master HOST:PORT`; without "
                          "--target the server listens on the master's address, with no "
                          "injected latency")
    run.add_argument("--master-bind", metavar="HOST",
                     help="with --load-workers: the address the master listens on "
                          "(default 0.0.0.0, every address)")
    run.add_argument("--master-port", type=_port, metavar="P",
                     help="with --load-workers: the master's port (default 5557)")
    run.add_argument("--target", type=_url, metavar="URL",
                     help="benchmark a deployment that runs elsewhere (no local server/DB), "
                          "as one column named by --target-name")
    run.add_argument("--target-name", type=_column_name, metavar="NAME",
                     help="with --target: the column's name (default: target)")
    run.add_argument("--target-db", metavar="DSN",
                     help="with --target: the target's PostgreSQL (e.g. postgresql://bench@db:"
                          "5432/posts; password from PGPASSWORD), for connections counted in "
                          "pg_stat_activity over one connection opened before the load")
    run.add_argument("--pg-max-connections", type=_int_list(1, "--pg-max-connections"),
                     metavar="N,N", help="sweep: override the variants' PostgreSQL "
                                         "max_connections; one column per value")
    run.add_argument("--pool-size", type=_int_list(1, "--pool-size"), metavar="N,N",
                     help="sweep: override the pool max_size of pooled variants")
    run.add_argument("--conn-max-age", type=_int_list(0, "--conn-max-age"), metavar="S,S",
                     help="sweep: override the variants' Django CONN_MAX_AGE (seconds); one "
                          "column per value; a value > 0 over a variant with Django's pool "
                          "is skipped with the reason (the pool requires 0)")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.add_argument("--docker", action="store_true",
                     help="Docker mode: each cell as containers (docker/compose.yaml: db, "
                          "server, load); latency by netem in the server container, else a "
                          "proxy sidecar")
    run.add_argument("--base-image", metavar="IMAGE",
                     help="with --docker: the base image's own base (default: "
                          "python:3.11-slim, or asynchronize-django-offline-base:bookworm "
                          "when only that one is present; see docker/offline-base)")
    _add_pg(run)
    _add_pgbouncer(run, "those variants are skipped (listed in run.json and the report)")

    db = sub.add_parser("db", help="PostgreSQL for Docker mode: template + fresh database, "
                                   "until stopped",
                        description="Start the embedded PostgreSQL (password from DB_PASSWORD), "
                                    "ensure the template, clone a fresh database, print "
                                    "'database ready' and run until SIGTERM/Ctrl-C.")
    db.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    db.add_argument("--port", type=_positive, default=5432, help="port (default 5432)")
    db.add_argument("--max-connections", type=_positive, default=100,
                    help="PostgreSQL max_connections (default 100)")
    db.add_argument("--database", default="posts", help="the fresh database's name (default posts)")
    db.add_argument("--allow", action="append", default=[], metavar="CIDR",
                    help="also accept password-authenticated TCP clients from CIDR (or "
                         "'samenet'); repeatable")
    _add_pg(db)

    load = sub.add_parser("load", help="run Locust headless against a URL on one route",
                          description="One Locust run (a profile from load/profiles.toml) "
                                      "writing the cell files (stats_history.csv, ...) to --out.")
    load.add_argument("url", help="base URL of the server, e.g. http://server:8000")
    load.add_argument("--route", choices=ROUTES, required=True, help="the route to load")
    load.add_argument("--profile", type=_profile, default="quick",
                      help="load profile (default: quick)")
    load.add_argument("--processes", type=_positive, default=1,
                      help="Locust processes (default 1)")
    load.add_argument("--workers", type=_count, default=0, metavar="N",
                      help="run as a master (port 5557, every address) that waits for N "
                           "`bench load-worker`s (default 0: the load runs here)")
    load.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="folder for Locust's files")

    worker = sub.add_parser(
        "load-worker", help="a Locust worker for `run --load-workers` on another host, "
                            "until Ctrl-C",
        description="Start a Locust worker (the lab's locustfile) that joins the master of "
                    "`python -m bench run --load-workers N` at HOST:PORT; each cell is a new "
                    "Locust run, so it joins each one in turn until Ctrl-C.")
    worker.add_argument("--master", type=_master, required=True, metavar="HOST:PORT",
                        help="where the run's master listens (the run prints it)")

    report = sub.add_parser("report", help="write report.md/report.html for a results folder",
                            description="Build report.md, report.html and figures/ from a "
                                        "results folder (also a partial or failed run).")
    report.add_argument("results", type=_results_folder, metavar="RESULTS_DIR")

    table = sub.add_parser("table", help="print README's results table for a results folder",
                           description="Print, as Markdown, steady sRPS ± 95% CI at each "
                                       "latency, peak DB connections and peak server + DB "
                                       "memory per column, under the run id and commit.")
    table.add_argument("results", type=_results_folder, metavar="RESULTS_DIR")
    table.add_argument("--route", choices=ROUTES, default="io_create",
                       help="the route (default: io_create)")

    compare = sub.add_parser(
        "compare", help="compare two runs cell by cell: what changed beyond the noise",
        description="Match BASE's and NEW's cells by column, route and latency (repeats may "
                    "differ); per matched cell, steady sRPS and p99 on both sides, NEW/BASE "
                    "with its 95% interval and a verdict (faster, slower, not significant) "
                    "from Welch's t-test on the two steady sRPS estimates (across repeats "
                    "where a side has several, else the cell's batch-means interval). Also "
                    "the three-way interaction and the study's conclusions of each run, "
                    "and the two runs' metadata with a warning where they differ in a way "
                    "that breaks the comparison (latency backend, profile, machine, machine "
                    "speed during the cells beyond its noise, cpu/ work). Prints the tables and "
                    "writes compare.md, compare.html (self-contained) and "
                    "figures/compare_ratios.png into --out. Exit code 0; 1 with "
                    "--fail-on-regression when a matched cell is significantly slower by "
                    "more than --min-change; 2 for a folder that is not a run, or two runs "
                    "with no cell in common.")
    compare.add_argument("base", type=_results_folder, metavar="BASE",
                         help="the results folder to compare against")
    compare.add_argument("new", type=_results_folder, metavar="NEW",
                         help="the results folder compared with BASE")
    compare.add_argument("--min-change", type=_fraction, default=0.0, metavar="FRACTION",
                         help="a significant change of at most this fraction of BASE's steady "
                              "sRPS is reported as not significant, e.g. 5%% or 0.05 (default "
                              "0: any significant change counts)")
    compare.add_argument("--fail-on-regression", action="store_true",
                         help="exit 1 when any matched cell is significantly slower by more "
                              "than --min-change")
    compare.add_argument("--out", type=Path, metavar="DIR",
                         help="folder for compare.md, compare.html and figures/ (default: "
                              "NEW)")
    compare.add_argument("--pair", type=_column_pair, action="append", default=[],
                         metavar="BASE_COLUMN=NEW_COLUMN",
                         help="compare NEW's column with BASE's column of another name, "
                              "e.g. async_pooled=async_pooled+pool5 for a sweep's setting "
                              "(repeatable)")
    return parser


def _column_pair(text: str) -> tuple[str, str]:
    base, sep, new = text.partition("=")
    if not sep or not base.strip() or not new.strip():
        raise argparse.ArgumentTypeError(
            f"expected BASE_COLUMN=NEW_COLUMN, e.g. async_pooled=async_pooled+pool5, got "
            f"{text!r}")
    return base.strip(), new.strip()


def cmd_variants(args: argparse.Namespace) -> int:
    from bench.variants import discover

    for variant in discover().values():
        mark = " " if variant.default_run else "-"
        print(f"{mark} {variant.name:<22} {variant.interface:<5} {variant.views:<7} "
              f"{variant.title}")
    return 0


def cmd_requirements(args: argparse.Namespace) -> int:
    from bench.variants import all_requirements, discover

    for req in all_requirements(list(discover().values())):
        print(req)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bench.net import free_port
    from bench.postgres import PostgresCluster
    from bench.server import ServerError, ServerProcess, app_environment
    from bench.variants import VariantError, discover, select

    variant = select(discover(), [args.variant])[0]
    if args.port:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((args.host, args.port))
        except OSError as exc:
            raise ServerError(f"cannot bind {args.host}:{args.port} ({exc.strerror}); omit "
                              "--port to use a free one") from None
    port = args.port or free_port(args.host)
    dsn = ""
    with contextlib.ExitStack() as stack, signals_interrupt():
        if args.external_db:
            missing = [k for k in ("DB_HOST", "DB_NAME", "DB_PASSWORD") if not os.environ.get(k)]
            if missing:
                raise VariantError(f"--external-db needs {', '.join(missing)} in the environment")
            db_env = {k: v for k, v in os.environ.items() if k.startswith("DB_")}
        else:
            cluster = PostgresCluster(pg_bin=args.pg_bin)
            stack.callback(cluster.stop)
            # One slot more than the variant's, for `bench run --target-db`'s monitor
            # connection, so the server keeps all of its own.
            cluster.start(max_connections=variant.max_connections + 1)
            cluster.ensure_template(args.rows)
            dbname = cluster.clone_database(f"serve_{variant.name}")
            db_env = cluster.app_env(dbname)
            if variant.pgbouncer is not None:
                from bench.pgbouncer import PgBouncer, find_binary

                pooler = PgBouncer(find_binary(args.pgbouncer_bin), cluster.pgbouncer_folder)
                stack.callback(pooler.stop)
                assert cluster.port is not None
                pooler.start(variant.pgbouncer, cluster.host, cluster.port, cluster.user,
                             cluster.scram_secret())
                db_env = cluster.app_env(dbname, pooler.host, pooler.port)
            dsn = f"postgresql://{db_env['DB_USER']}@{cluster.host}:{cluster.port}/{dbname}"
        allowed = sorted({"localhost", "127.0.0.1", args.host} - {"0.0.0.0"}) + (
            ["*"] if args.host == "0.0.0.0" else [])  # noqa: S104 - bind-all means any Host
        env = app_environment(variant, db_env, allowed, args.cpu_loop or 10**7,
                              cpu_ms=args.cpu_ms or None)
        subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
                       env=env, check=True)
        log = Path(os.environ.get("BENCH_SERVE_LOG", "/dev/stdout"))
        server = ServerProcess(variant.server_command(args.host, port), env, log)
        stack.callback(server.stop)
        server.start()
        server.wait_listening("127.0.0.1" if args.host == "0.0.0.0" else args.host, port)
        print(f"{variant.name} serving at http://{args.host}:{port}/  (Ctrl-C stops)", flush=True)
        if not args.external_db:
            print(f"its PostgreSQL, for bench run --target-db: {dsn}  (password: "
                  f"PGPASSWORD=$(cat {cluster.password_file}); max_connections "
                  f"{variant.max_connections} + 1 for the monitor)", flush=True)
        try:
            code = server.wait_exit()
        except KeyboardInterrupt:
            print("stopping", flush=True)
            return 0
        print(f"server exited with code {code}", file=sys.stderr)
        return 1


def _check_run_options(args: argparse.Namespace) -> None:
    """Options that only make sense together; one line naming them."""
    from bench.runner import RunError

    if args.load_workers is None and (args.master_bind or args.master_port):
        raise RunError("--master-bind and --master-port go with --load-workers N")
    if args.load_workers is not None and args.load_processes > 1:
        raise RunError("--load-workers (load from other hosts) and --load-processes (on this "
                       "host) exclude each other")
    if args.docker and (args.master_bind or args.master_port):
        raise RunError("with --docker the load-worker containers join the load container's "
                       "master: --master-bind and --master-port do not apply")
    if args.target is None and (args.target_name or args.target_db):
        raise RunError("--target-name and --target-db go with --target URL")
    if args.target is not None and args.docker:
        raise RunError("--target and --docker exclude each other")
    if args.target is not None and args.variants:
        raise RunError("--target runs one column (--target-name), not --variants")
    if args.target is not None and (args.pg_max_connections or args.pool_size):
        raise RunError("--pg-max-connections and --pool-size sweep local deployments, not "
                       "a --target")


def cmd_run(args: argparse.Namespace) -> int:
    from bench.load import MASTER_BIND, MASTER_PORT
    from bench.runner import RunConfig, run

    _check_run_options(args)
    config = RunConfig(
        variants=args.variants, routes=args.routes, latencies_ms=args.latencies,
        profile=args.profile, repeats=args.repeats, latency_backend=args.latency_backend,
        out=args.out, resume=args.resume, load_processes=args.load_processes,
        load_workers=args.load_workers, master_bind=args.master_bind or MASTER_BIND,
        master_port=args.master_port or MASTER_PORT, target=args.target,
        target_name=args.target_name, target_db=args.target_db, pg_bin=args.pg_bin,
        pg_max_connections=args.pg_max_connections,
        pool_sizes=args.pool_size, conn_max_ages=args.conn_max_age,
        pgbouncer_bin=args.pgbouncer_bin, cpu_loop=args.cpu_loop, cpu_ms=args.cpu_ms,
        precision=args.precision, seed=args.seed, rows=args.rows,
    )
    if args.docker:
        from bench.docker import DockerRunner

        runner = DockerRunner(config, base_image=args.base_image)
        code, out = runner.run(), runner.out
    else:
        code, out = run(config)
    if not args.no_report and code != 130:
        from bench.report import build_report

        try:
            for path in build_report(out):
                if path.suffix in {".md", ".html"}:
                    print(path)
        except Exception as exc:  # noqa: BLE001 - the results stand without a report
            print(f"warning: report failed: {exc}; retry with python -m bench report",
                  file=sys.stderr)
    return code


def cmd_db(args: argparse.Namespace) -> int:
    from bench.postgres import PostgresCluster, PostgresError, cache_root

    password = os.environ.get("DB_PASSWORD")
    if not password:
        raise PostgresError("db needs DB_PASSWORD in the environment (the clients' password)")
    with contextlib.ExitStack() as stack, signals_interrupt():
        # A cache of its own: set_password() changes the cache's password file, which the
        # clusters of `bench run` on the same host share.
        cluster = PostgresCluster(cache_dir=cache_root() / "db-mode", pg_bin=args.pg_bin)
        stack.callback(cluster.close)
        cluster.start(max_connections=args.max_connections, listen_host=args.host,
                      port=args.port)
        cluster.set_password(password)
        for address in args.allow:
            cluster.allow_clients(address)
        cluster.ensure_template(args.rows)
        cluster.clone_database(args.database)
        print(f"database ready: {args.database} on {args.host}:{args.port} (PostgreSQL "
              f"{cluster.version}, max_connections {args.max_connections})", flush=True)
        try:
            cluster.wait()
        except KeyboardInterrupt:
            return 0
        print(f"PostgreSQL exited: {cluster.log_tail()}", file=sys.stderr)
        return 1


def cmd_load(args: argparse.Namespace) -> int:
    from bench.load import LoadError, LocustRun, MasterLocustRun, load_profile

    if args.workers and args.processes > 1:
        raise LoadError("--workers (a master for load-workers) and --processes exclude "
                        "each other")
    args.out.mkdir(parents=True, exist_ok=True)
    locust: LocustRun
    if args.workers:
        locust = MasterLocustRun(args.url.rstrip("/"), args.route, load_profile(args.profile),
                                 args.out, args.workers)
    else:
        locust = LocustRun(args.url.rstrip("/"), args.route, load_profile(args.profile),
                           args.out, processes=args.processes)
    with signals_interrupt():
        try:
            locust.start()
            return locust.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            locust.stop()


def cmd_load_worker(args: argparse.Namespace) -> int:
    from bench.load import run_load_worker

    host, port = args.master
    with signals_interrupt():
        try:
            return run_load_worker(host, port, lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            print("load worker: stopped", flush=True)
            return 130


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import build_report

    for path in build_report(args.results):
        if path.suffix in {".md", ".html"}:
            print(path)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from bench.report.results_table import results_table_of_folder

    print(results_table_of_folder(args.results, args.route), end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.report import write_comparison
    from bench.report.terminal import print_compare

    comparison, report, paths = write_comparison(args.base, args.new, args.min_change,
                                                 args.out, args.pair)
    # Piped or redirected: wide enough for the cell table instead of rich's 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    print_compare(report, console)
    for path in paths[:2]:
        print(path)
    regressions = comparison.regressions
    if args.fail_on_regression and regressions:
        print(f"regression: {len(regressions)} cell(s) significantly slower by more than "
              f"{args.min_change:.0%}: " + ", ".join(c.label for c in regressions),
              file=sys.stderr)
        return 1
    return 0


COMMANDS = {"variants": cmd_variants, "requirements": cmd_requirements, "serve": cmd_serve,
            "run": cmd_run, "report": cmd_report, "table": cmd_table,
            "compare": cmd_compare, "db": cmd_db, "load": cmd_load,
            "load-worker": cmd_load_worker}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
