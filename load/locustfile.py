"""Locust users for the study's three routes, and the load shape of a profile.

Run by `bench/load.py` (headless, as a subprocess); configured by environment:
  BENCH_PROFILE        JSON: users, spawn_rate, duration_s (the backstop), timeout_s
  BENCH_RESPONSES_DIR  folder for one responses.<pid>.csv per Locust process, appended as
                       requests end (the harness reads it while the load runs), and a
                       start.<pid> with the test's start time
  BENCH_STOP_FILE      when this file exists the shape ends the test (the harness stops the
                       load once the steady state is measured precisely enough)
  BENCH_GO_FILE        (optional, one local process) the test starts when this file exists:
                       Locust is launched, and imports, while the harness verifies the server
One user class per route (CpuUser, IoReadUser, IoCreateUser), chosen on Locust's command
line. No wait time: each user sends its next request as soon as the last one is answered.

Across hosts (`bench run --load-workers N`, `bench load-worker`) the master runs this file
with the environment above; a worker on another host has none of it. The master's
`--bench-profile` (a custom argument, which Locust hands to every worker with each spawn)
gives the workers the timeout; each worker sends its rows, its start time and its CPU to
the master in "bench_rows" messages about once a second, and the master appends them to
`responses.w<index>.csv`, `start.w<index>` and `workers.csv` in its BENCH_RESPONSES_DIR, so
the harness reads a remote worker's requests exactly like a local process's. Before the
test ends the master asks every worker for its last rows ("bench_flush") and waits for
them. A worker that goes missing mid-test (no heartbeat) or quits ends the test at once:
the master writes why to `failure` in that folder and exits with code 3.

A failed request is named by kind, so failures.csv counts kinds directly:
  "HTTP <status> <error kind from the JSON body>", "timeout", "connection refused",
  "connection reset", or the exception's class name.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import socket
import string
import time
from typing import Any

import gevent
import psutil
from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

PROFILE: dict[str, Any] = json.loads(os.environ.get("BENCH_PROFILE") or "{}")
TIMEOUT_S = float(PROFILE.get("timeout_s", 60))
RESPONSES_DIR = os.environ.get("BENCH_RESPONSES_DIR", "")
STOP_FILE = os.environ.get("BENCH_STOP_FILE", "")
GO_FILE = os.environ.get("BENCH_GO_FILE", "")
ALPHABET = string.ascii_letters + string.digits + " "
SEND_INTERVAL_S = 1.0  # how often a worker sends its rows to the master
FLUSH_WAIT_S = 5.0  # how long the master waits for the workers' last rows
LOST_WORKER_EXIT_CODE = 3
MASTER_GONE_EXIT_CODE = 4  # a worker whose master went away (_MasterWatch)
STOP_POLL_S = 0.05  # how often the stop file is looked for (_StopWatch)
MASTER_SILENT_S = 10.0  # a worker quits after this long without the master (_MasterWatch)
GATE_POLL_S = 0.02  # how often the go file is looked for (_register)


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--bench-profile", default="", include_in_web_ui=False,
                        help="the profile as JSON (the master hands it to its workers)")


def _configure(profile: dict[str, Any]) -> None:
    """Apply a profile received from the master (users are created after test_start)."""
    timeout = float(profile.get("timeout_s", TIMEOUT_S))
    _RouteUser.network_timeout = timeout
    _RouteUser.connection_timeout = timeout


def failure_kind(status: int, body: bytes | None, error: BaseException | None) -> str:
    """One short label for a failed request."""
    if status and status >= 400:
        kind = ""
        try:
            kind = str(json.loads(body or b"{}").get("error", ""))
        except (ValueError, AttributeError):
            kind = ""
        return f"HTTP {status} {kind}".strip()
    if error is None:
        return f"HTTP {status}"
    name = type(error).__name__
    text = str(error).lower()
    if "timeout" in name.lower() or "timed out" in text:
        return "timeout"
    if isinstance(error, ConnectionRefusedError) or "refused" in text:
        return "connection refused"
    if isinstance(error, ConnectionResetError) or "reset" in text:
        return "connection reset"
    return name


class _RouteUser(FastHttpUser):
    abstract = True
    network_timeout = TIMEOUT_S
    connection_timeout = TIMEOUT_S
    path = ""

    def _check(self, response: Any) -> None:
        if 200 <= response.status_code < 300:
            response.success()
        else:
            response.failure(failure_kind(response.status_code, response.content,
                                          response.error))


    def _get(self) -> None:
        name = self.path.strip("/")
        with self.client.get(self.path, name=name, catch_response=True) as response:
            self._check(response)


class CpuUser(_RouteUser):
    path = "/cpu/"
    tasks = [_RouteUser._get]


class IoReadUser(_RouteUser):
    path = "/io_read/"
    tasks = [_RouteUser._get]


class IoCreateUser(_RouteUser):
    path = "/io_create/"

    @task
    def io_create(self) -> None:
        data = {"title": "".join(random.choices(ALPHABET, k=random.randint(8, 60))).strip()
                or "t",
                "content": "".join(random.choices(ALPHABET, k=random.randint(20, 400))).strip()
                or "c"}
        with self.client.post(self.path, data=data, name="io_create",
                              catch_response=True) as response:
            self._check(response)


class ProfileShape(LoadTestShape):
    """Ramp to `users` at `spawn_rate` and hold, until the harness's stop file appears or
    `duration_s` (the backstop) passes; on a master, also until a worker is lost."""

    def tick(self) -> tuple[int, float] | None:
        if not PROFILE:
            return None
        runner = self.runner
        if isinstance(runner, MasterRunner) and _workers.lost(runner):
            return None
        if (STOP_FILE and os.path.exists(STOP_FILE)) or \
                self.get_run_time() >= float(PROFILE["duration_s"]):
            _stop_watch.before_quit(runner)
            return None
        return int(PROFILE["users"]), float(PROFILE["spawn_rate"])


class _StopWatch:
    """Ends the test within STOP_POLL_S of the stop file. Locust asks the shape for its next
    tick once a second, so the shape alone saw the file 0.5 s late on average (up to 1 s),
    in every cell; this greenlet quits the runner the way Locust's own --run-time does."""

    def __init__(self) -> None:
        self.greenlet: Any = None
        self.collected = False

    def start(self, environment: Any = None, **_: Any) -> None:
        runner = getattr(environment, "runner", None)
        if STOP_FILE and runner is not None and not isinstance(runner, WorkerRunner) \
                and self.greenlet is None:
            self.greenlet = gevent.spawn(self._watch, runner)

    def _watch(self, runner: Any) -> None:
        while not os.path.exists(STOP_FILE):
            gevent.sleep(STOP_POLL_S)
        self.before_quit(runner)
        runner.quit()

    def before_quit(self, runner: Any) -> None:
        """On a master, the workers' last rows, once (the shape may see the file too)."""
        if isinstance(runner, MasterRunner) and not self.collected:
            self.collected = True
            _workers.collect_last_rows(runner)


class _Responses:
    """One row per request, appended to this process's log as requests end."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.writer: Any = None

    def on_start(self, environment: Any = None, **_: Any) -> None:
        runner = getattr(environment, "runner", None)
        if isinstance(runner, WorkerRunner) and not RESPONSES_DIR:
            _sender.start(environment)  # a worker on another host: rows go to the master
            return
        if not RESPONSES_DIR or isinstance(runner, MasterRunner):
            return  # a master sends no requests
        pid = os.getpid()
        with open(os.path.join(RESPONSES_DIR, f"start.{pid}"), "w") as marker:
            marker.write(f"{time.time():.6f}\n")
        if self.handle is None:
            # Line-buffered: each row reaches the file when the request ends.
            self.handle = open(os.path.join(RESPONSES_DIR, f"responses.{pid}.csv"), "a",
                               newline="", buffering=1)
            self.writer = csv.writer(self.handle, lineterminator="\n")
            self.writer.writerow(("end_unix_s", "name", "response_time_ms", "ok", "kind"))

    def on_request(self, name: str, response_time: float, exception: BaseException | None,
                   start_time: float | None = None, **_: Any) -> None:
        if self.writer is None and not _sender.running:
            return
        end = (start_time or time.time()) + (response_time or 0) / 1000
        kind = "" if exception is None else str(exception).split(":")[-1].strip() or type(
            exception).__name__
        if exception is not None and not kind.startswith(("HTTP", "timeout", "connection")):
            kind = failure_kind(0, None, exception)
        row = (f"{end:.4f}", name, round(response_time or 0, 2), int(exception is None), kind)
        if _sender.running:
            _sender.rows.append(row)
        else:
            self.writer.writerow(row)

    def close(self, **_: Any) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            self.writer = None


class _Sender:
    """A worker's side: rows, start time and CPU to the master, about once a second."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.running = False
        self.environment: Any = None
        self.started_at = 0.0
        self.address = ""
        self._process = psutil.Process()
        self._greenlet: Any = None

    def start(self, environment: Any) -> None:
        options = environment.parsed_options
        if options is not None and getattr(options, "bench_profile", ""):
            _configure(json.loads(options.bench_profile))
        self.environment = environment
        self.rows = []
        self.started_at = time.time()
        self.address = _own_address(getattr(environment.runner, "master_host", ""))
        self._process.cpu_percent(None)  # the baseline of the first figure
        self.running = True
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(SEND_INTERVAL_S)
            if self.running:
                self.send()

    def send(self, final: bool = False) -> None:
        rows, self.rows = self.rows, []
        try:
            cpu: float | None = self._process.cpu_percent(None)
        except (psutil.Error, OSError):
            cpu = None  # named "not measured" in the cell, never 0
        self.environment.runner.send_message("bench_rows", {
            "started_at": self.started_at, "address": self.address, "rows": rows,
            "cpu_pct": cpu, "sent_at": time.time(), "final": final})

    def flush(self, **_: Any) -> None:
        if self.running:
            self.send(final=True)

    def stop(self, **_: Any) -> None:
        if self.running:
            self.send(final=True)
            self.running = False


def _own_address(master_host: str) -> str:
    """The address this host reaches the master from (what the master sees)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((master_host or "127.0.0.1", 9))
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostname()


class _Workers:
    """The master's side: the workers' rows into files the harness reads, lost workers."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # client id -> source name (w<index>)
        self.addresses: dict[str, str] = {}  # client id -> the worker's address
        self.joined: set[str] = set()  # every client id that took part
        self.handles: dict[str, Any] = {}
        self.flushed: set[str] = set()
        self.failed = False
        self.closed = False

    def on_rows(self, environment: Any, msg: Any, **_: Any) -> None:
        # After close() (the master is quitting) a late batch is dropped: an exception
        # here would end the master's message loop with an unhandled-error exit code.
        if not RESPONSES_DIR or self.closed:
            return
        data = msg.data or {}
        runner = environment.runner
        source = self.seen.get(msg.node_id)
        if source is None:
            source = f"w{runner.get_worker_index(msg.node_id)}"
            self.seen[msg.node_id] = source
            with open(os.path.join(RESPONSES_DIR, f"start.{source}"), "w") as marker:
                marker.write(f"{float(data.get('started_at') or time.time()):.6f}\n")
            handle = open(os.path.join(RESPONSES_DIR, f"responses.{source}.csv"), "a",
                          newline="", buffering=1)
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("end_unix_s", "name", "response_time_ms", "ok", "kind"))
            self.handles[msg.node_id] = (handle, writer)
        handle, writer = self.handles[msg.node_id]
        self.addresses[msg.node_id] = str(data.get("address", ""))
        writer.writerows(data.get("rows") or [])
        cpu = data.get("cpu_pct")
        with open(os.path.join(RESPONSES_DIR, "workers.csv"), "a") as log:
            log.write(f"{float(data.get('sent_at') or time.time()):.3f},{source},"
                      f"{data.get('address', '')},{'' if cpu is None else round(cpu, 1)},"
                      f"{len(data.get('rows') or [])}\n")
        if data.get("final"):
            self.flushed.add(msg.node_id)

    def lost(self, runner: Any) -> bool:
        """A worker that took part went missing or quit: write why, end with code 3."""
        if self.failed:
            return True
        self.joined |= {node.id for node in runner.clients.all}
        for client_id in sorted(self.joined):
            node = runner.clients[client_id] if client_id in runner.clients else None
            if node is None or node.state == STATE_MISSING:
                how = "quit" if node is None else "stopped answering (no heartbeat for 3 s)"
                name = self.seen.get(client_id) or f"w{runner.get_worker_index(client_id)}"
                address = self.addresses.get(client_id)
                self.fail(runner.environment,
                          f"load worker {name}{f' at {address}' if address else ''} {how} "
                          f"mid-cell ({runner.worker_count} still connected)")
                return True
        return False

    def fail(self, environment: Any, reason: str) -> None:
        self.failed = True
        environment.process_exit_code = LOST_WORKER_EXIT_CODE
        if RESPONSES_DIR:
            with open(os.path.join(RESPONSES_DIR, "failure"), "w") as handle:
                handle.write(reason + "\n")

    def collect_last_rows(self, runner: Any) -> None:
        """Ask every worker for its last rows and wait (a while) until they are in."""
        runner.send_message("bench_flush")
        deadline = time.monotonic() + FLUSH_WAIT_S
        while time.monotonic() < deadline and not set(self.seen) <= self.flushed:
            gevent.sleep(0.05)

    def close(self, **_: Any) -> None:
        self.closed = True
        for handle, _writer in self.handles.values():
            handle.close()
        self.handles = {}


class _MasterWatch:
    """A worker's side: quit when the master that acknowledged it has gone, so that
    `bench load-worker` starts a new Locust for the next cell's master.

    The master answers each of the worker's heartbeats (one a second). Locust's worker
    gives up on a silent master only after 60 s, and never if the master left before its
    first answer: a worker that greeted a master on its way out (the last cell's, as it
    quit) then waited on it forever, and the next cell's master, on the same port, timed
    out waiting for it (CI: repeat 3 of the two-host test, after repeat 2 failed)."""

    def __init__(self) -> None:
        self.heard_at = time.monotonic()

    def start(self, runner: Any) -> None:
        self.heard_at = time.monotonic()  # acknowledged: connect_to_master has returned
        gevent.spawn(self._watch, runner)

    def heard(self, **_: Any) -> None:
        self.heard_at = time.monotonic()

    def _watch(self, runner: Any) -> None:
        # During a test too: a worker that joined a master in its last seconds (CI: the
        # killed worker's successor, 2 s before repeat 2's end) got users but no quit, and
        # waited out Locust's 60 s while the next master waited 60 s for it. The master
        # itself counts a worker lost after 3 s without a heartbeat.
        while True:
            silent = time.monotonic() - self.heard_at
            if silent > MASTER_SILENT_S:
                logging.getLogger(__name__).warning(
                    "no answer from the master at %s:%s for %.0f s: it has gone; quitting "
                    "so that a new worker joins the next master",
                    runner.master_host, runner.master_port, silent)
                runner.environment.process_exit_code = MASTER_GONE_EXIT_CODE
                runner.quit()
                return
            gevent.sleep(1.0)


_responses = _Responses()
_sender = _Sender()
_workers = _Workers()
_stop_watch = _StopWatch()
_master_watch = _MasterWatch()
events.test_start.add_listener(_stop_watch.start)
events.test_start.add_listener(_responses.on_start)
events.request.add_listener(_responses.on_request)
events.quitting.add_listener(_responses.close)
events.test_stop.add_listener(_sender.stop)
events.quitting.add_listener(_workers.close)


@events.init.add_listener
def _register(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message("bench_rows", _workers.on_rows)
    elif isinstance(runner, WorkerRunner):
        runner.register_message("bench_flush", lambda **kw: _sender.flush())
        environment.events.heartbeat_received.add_listener(_master_watch.heard)
        _master_watch.start(runner)
    elif GO_FILE:
        # Locust starts a headless test right after its init event: holding it here holds
        # the test (and its start.<pid> marker) until the harness opens the gate.
        while not os.path.exists(GO_FILE):
            gevent.sleep(GATE_POLL_S)
