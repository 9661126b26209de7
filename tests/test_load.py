"""Load profiles as data, real Locust runs against a tiny server, and cell metrics."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.load import (
    LoadError,
    LocustRun,
    Profile,
    available_profiles,
    load_profile,
    parse_profile,
)
from bench.metrics import batch_means_ci, cell_metrics

GOOD = {"users": 10, "spawn_rate": 10, "duration_s": 10, "hold_start_s": 2, "timeout_s": 5}


def test_shipped_profiles() -> None:
    assert {"study", "quick", "smoke"} <= set(available_profiles())
    study = load_profile("study")
    assert (study.users, study.spawn_rate, study.duration_s) == (500, 5, 180)
    assert study.hold_start_s >= study.users / study.spawn_rate  # hold starts after the ramp
    for name in available_profiles():
        profile = load_profile(name)
        assert profile.hold_start_s >= profile.users / profile.spawn_rate


@pytest.mark.parametrize(("change", "message"), [
    ({"users": -1}, "'users' must be a positive number"),
    ({"users": "many"}, "'users' must be a positive number"),
    ({"hold_start_s": 20}, "hold_start_s"),
    ({"burst": 1}, "unknown key 'burst'"),
    ({"timeout_s": None}, "'timeout_s' is missing"),
])
def test_bad_profiles_are_named(change: dict[str, object], message: str) -> None:
    table = {**GOOD, **change}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(LoadError, match=message):
        parse_profile("p", table)


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(LoadError, match="valid: .*quick"):
        load_profile("fast")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/cpu/":
            self._answer(200, {"ct": 1})
        else:
            self._answer(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode()
        ok = "title=" in body and "content=" in body
        self._answer(503 if ok else 400, {"error": "pool_timeout" if ok else "bad_request"})

    def _answer(self, status: int, data: dict[str, object]) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


SHORT = Profile(name="t", users=4, spawn_rate=4, duration_s=4, hold_start_s=1, timeout_s=5)


@pytest.mark.parametrize("processes", [1, 2])
def test_locust_run_writes_the_cell_files(tiny_server: str, tmp_path: Path,
                                          processes: int) -> None:
    run = LocustRun(tiny_server, "cpu", SHORT, tmp_path, processes=processes)
    run.start()
    assert run.pids()
    assert run.wait(timeout=60) == 0
    for name in ("stats.csv", "stats_history.csv", "failures.csv", "responses.csv"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / ".locust").exists()
    metrics = cell_metrics(tmp_path, SHORT)
    assert metrics["total_successes"] > 50 and metrics["total_failures"] == 0
    assert metrics["steady_srps"] > 10 and metrics["max_srps"] > 0
    with (tmp_path / "responses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["total_requests"]
    assert max(float(r["t_s"]) for r in rows) < SHORT.duration_s + 2


def test_failures_are_named_by_kind(tiny_server: str, tmp_path: Path) -> None:
    run = LocustRun(tiny_server, "io_create", SHORT, tmp_path)
    run.start()
    run.wait(timeout=60)
    metrics = cell_metrics(tmp_path, SHORT)
    assert metrics["total_successes"] == 0
    assert set(metrics["failures_by_kind"]) == {"HTTP 503 pool_timeout"}
    with (tmp_path / "failures.csv").open() as handle:
        assert "HTTP 503 pool_timeout" in handle.read()


def test_refused_connection_is_its_own_kind(tmp_path: Path) -> None:
    from bench.net import free_port

    run = LocustRun(f"http://127.0.0.1:{free_port('127.0.0.1')}", "cpu",
                    Profile("t", 2, 2, 2, 0.5, 2), tmp_path)
    run.start()
    run.wait(timeout=60)
    kinds = cell_metrics(tmp_path, SHORT)["failures_by_kind"]
    assert list(kinds) == ["connection refused"], kinds


def test_stop_ends_locust_and_keeps_its_files(tiny_server: str, tmp_path: Path) -> None:
    run = LocustRun(tiny_server, "cpu", Profile("t", 4, 4, 60, 1, 5), tmp_path, processes=2)
    run.start()
    with pytest.raises(TimeoutError):
        run.wait(timeout=4)
    pid = run.pids()[0]
    run.stop()
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert (tmp_path / "responses.csv").is_file()


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_metrics_definitions(tmp_path: Path) -> None:
    profile = Profile("t", users=10, spawn_rate=10, duration_s=12, hold_start_s=2, timeout_s=5)
    rows: list[list[object]] = []
    # 50 successes/s during the hold (t in [2, 12)), 100 ms each; 1 timeout/s; 5/s in the ramp.
    for second in range(12):
        per_second = 50 if second >= 2 else 5
        for i in range(per_second):
            rows.append([second + i / per_second, "cpu", 100.0, 1, ""])
        if second >= 2:
            rows.append([second + 0.5, "cpu", 5000.0, 0, "timeout"])
    _write(tmp_path / "responses.csv", ["t_s", "name", "response_time_ms", "ok", "kind"], rows)
    _write(tmp_path / "stats_history.csv", ["Timestamp", "Name", "Requests/s", "Failures/s"],
           [[1, "Aggregated", 40, 1], [2, "Aggregated", 55, 2], [3, "cpu", 999, 0]])
    _write(tmp_path / "resources.csv",
           ["t_s", "server_rss_mib", "server_cpu_pct", "server_threads", "db_connections",
            "db_rss_mib", "locust_cpu_pct"],
           [[1, 50, 90, 3, 1, 100, 95], [2, 60, 95, 5, 4, 120, 96], [3, 55, 97, 4, 2, 110, 97]])
    m = cell_metrics(tmp_path, profile)
    assert m["steady_srps"] == 50.0
    assert m["steady_srps_ci95"] == [50.0, 50.0] or m["steady_srps_ci95"] == (50.0, 50.0)
    assert m["total_successes"] == 10 + 500 and m["total_failures"] == 10
    assert m["failures_by_kind"] == {"timeout": 10}
    assert m["max_srps"] == 53.0  # 55 - 2, Aggregated rows only
    assert m["p50_ms"] == 100.0 and m["p99_ms"] > 100.0
    assert m["peak_server_rss_mib"] == 60 and m["peak_db_connections"] == 4
    assert m["peak_server_db_rss_mib"] == 180
    assert m["load_generator_saturated"] is True
    # Little's law: (500 * 0.1 s + 10 * 5 s) / 10 s = 10 in flight
    assert m["mean_in_flight"] == 10.0
    assert m["rss_per_in_flight_kib"] == round((180 - 150) * 1024 / 10, 1)


def test_batch_means_interval() -> None:
    low, high = batch_means_ci([10.0, 12.0, 11.0, 9.0, 13.0])
    assert low < 11.0 < high
    assert batch_means_ci([5.0]) is None
