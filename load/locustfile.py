"""Locust users for the study's three routes, and the load shape of a profile.

Run by `bench/load.py` (headless, as a subprocess); configured by environment:
  BENCH_PROFILE        JSON: users, spawn_rate, duration_s (the backstop), timeout_s
  BENCH_RESPONSES_DIR  folder for one responses.<pid>.csv per Locust process, appended as
                       requests end (the harness reads it while the load runs), and a
                       start.<pid> with the test's start time
  BENCH_STOP_FILE      when this file exists the shape ends the test (the harness stops the
                       load once the steady state is measured precisely enough)
One user class per route (CpuUser, IoReadUser, IoCreateUser), chosen on Locust's command
line. No wait time: each user sends its next request as soon as the last one is answered.

A failed request is named by kind, so failures.csv counts kinds directly:
  "HTTP <status> <error kind from the JSON body>", "timeout", "connection refused",
  "connection reset", or the exception's class name.
"""

from __future__ import annotations

import csv
import json
import os
import random
import string
import time
from typing import Any

from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import MasterRunner

PROFILE: dict[str, Any] = json.loads(os.environ.get("BENCH_PROFILE") or "{}")
TIMEOUT_S = float(PROFILE.get("timeout_s", 60))
RESPONSES_DIR = os.environ.get("BENCH_RESPONSES_DIR", "")
STOP_FILE = os.environ.get("BENCH_STOP_FILE", "")
ALPHABET = string.ascii_letters + string.digits + " "


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
    `duration_s` (the backstop) passes."""

    def tick(self) -> tuple[int, float] | None:
        if not PROFILE:
            return None
        if STOP_FILE and os.path.exists(STOP_FILE):
            return None
        if self.get_run_time() >= float(PROFILE["duration_s"]):
            return None
        return int(PROFILE["users"]), float(PROFILE["spawn_rate"])


class _Responses:
    """One row per request, appended to this process's log as requests end."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.writer: Any = None

    def on_start(self, environment: Any = None, **_: Any) -> None:
        if not RESPONSES_DIR or isinstance(getattr(environment, "runner", None), MasterRunner):
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
        if self.writer is None:
            return
        end = (start_time or time.time()) + (response_time or 0) / 1000
        kind = "" if exception is None else str(exception).split(":")[-1].strip() or type(
            exception).__name__
        if exception is not None and not kind.startswith(("HTTP", "timeout", "connection")):
            kind = failure_kind(0, None, exception)
        self.writer.writerow((f"{end:.4f}", name, round(response_time or 0, 2),
                              int(exception is None), kind))

    def close(self, **_: Any) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            self.writer = None


_responses = _Responses()
events.test_start.add_listener(_responses.on_start)
events.request.add_listener(_responses.on_request)
events.quitting.add_listener(_responses.close)
