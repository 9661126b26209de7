"""Locust users for the study's three routes, and the load shape of a profile.

Run by `bench/load.py` (headless, as a subprocess); configured by environment:
  BENCH_PROFILE        JSON: users, spawn_rate, duration_s, timeout_s
  BENCH_RESPONSES_DIR  folder for one responses.<pid>.csv per Locust process
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

PROFILE: dict[str, Any] = json.loads(os.environ.get("BENCH_PROFILE") or "{}")
TIMEOUT_S = float(PROFILE.get("timeout_s", 60))
RESPONSES_DIR = os.environ.get("BENCH_RESPONSES_DIR", "")
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


class CpuUser(_RouteUser):
    path = "/cpu/"

    @task
    def cpu(self) -> None:
        with self.client.get(self.path, name="cpu", catch_response=True) as response:
            self._check(response)


class IoReadUser(_RouteUser):
    path = "/io_read/"

    @task
    def io_read(self) -> None:
        with self.client.get(self.path, name="io_read", catch_response=True) as response:
            self._check(response)


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
    """Ramp to `users` at `spawn_rate`, hold until `duration_s`, stop."""

    def tick(self) -> tuple[int, float] | None:
        if not PROFILE:
            return None
        if self.get_run_time() >= float(PROFILE["duration_s"]):
            return None
        return int(PROFILE["users"]), float(PROFILE["spawn_rate"])


class _Responses:
    """One row per request, kept in memory and written when the test stops."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.rows: list[tuple[float, str, float, int, str]] = []

    def on_start(self, **_: Any) -> None:
        self.t0 = time.time()
        self.rows.clear()

    def on_request(self, name: str, response_time: float, exception: BaseException | None,
                   start_time: float | None = None, **_: Any) -> None:
        if self.t0 is None:
            self.t0 = time.time()
        end = (start_time or time.time()) + (response_time or 0) / 1000
        kind = "" if exception is None else str(exception).split(":")[-1].strip() or type(
            exception).__name__
        if exception is not None and not kind.startswith(("HTTP", "timeout", "connection")):
            kind = failure_kind(0, None, exception)
        self.rows.append((round(end - self.t0, 3), name, round(response_time or 0, 2),
                          int(exception is None), kind))

    def write(self, **_: Any) -> None:
        if not RESPONSES_DIR or not self.rows:
            return
        path = os.path.join(RESPONSES_DIR, f"responses.{os.getpid()}.csv")
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("t_s", "name", "response_time_ms", "ok", "kind"))
            writer.writerows(self.rows)
        self.rows = []


_responses = _Responses()
events.test_start.add_listener(_responses.on_start)
events.request.add_listener(_responses.on_request)
events.test_stop.add_listener(_responses.write)
events.quitting.add_listener(_responses.write)
