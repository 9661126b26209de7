"""Load profiles as data, real Locust runs against a tiny server, and cell metrics."""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from conftest import JsonHandler

from bench.load import (
    LoadError,
    LocustRun,
    Profile,
    available_profiles,
    load_profile,
    parse_profile,
)
from bench.metrics import cell_metrics
from bench.requestlog import RequestLog

# One xdist worker runs these in order: Locust's --processes (processes=2 below) binds its
# local master to port 5557, so two such runs at once break each other (seen under -n 2).
pytestmark = pytest.mark.xdist_group("load")

GOOD = {"users": 10, "spawn_rate": 10, "min_hold_s": 5, "max_hold_s": 10, "precision": 0.05,
        "timeout_s": 5}


def test_shipped_profiles() -> None:
    assert {"study", "quick", "smoke", "tiny"} <= set(available_profiles())
    study = load_profile("study")
    # The study's exact shape: 0 to 500 users at 5/s, 180 s in all, no early stop, its loop.
    assert (study.users, study.spawn_rate, study.max_duration_s) == (500, 5, 180)
    assert study.precision == 0 and study.min_hold_s == study.max_hold_s
    assert study.cpu_ms is None and study.cpu_users is None  # 500 users on cpu/ as well
    assert study.for_route("cpu") == study
    quick = load_profile("quick")
    assert quick.precision == 0.05 and quick.cpu_ms == 670
    assert quick.min_hold_s < quick.max_hold_s
    # Few users on cpu/, so a request's wait (users x 0.67 s) fits well inside the hold.
    assert quick.cpu_users is not None
    assert quick.cpu_users * quick.cpu_ms / 1000 <= quick.min_hold_s / 2
    # Fewer users on io_read/ too: at 110 ms a request (a slow machine's count over the
    # table) their wait fits in half the minimum hold; still more than a pool of 20.
    for shaped in (quick, load_profile("long")):
        io_read = shaped.for_route("io_read")
        assert 20 < io_read.users and io_read.users * 0.110 <= shaped.min_hold_s
        assert io_read.ramp_s <= shaped.ramp_s and shaped.for_route("io_create") == shaped
    assert study.for_route("io_read") == study  # the study's 500 users on every route


def test_cpu_users_shape_only_the_cpu_route() -> None:
    profile = parse_profile("p", {**GOOD, "cpu_users": 2})
    cpu = profile.for_route("cpu")
    assert (cpu.users, cpu.spawn_rate, cpu.ramp_s) == (2, 10, 0.2)
    assert cpu.for_route("cpu") == cpu
    staggered = parse_profile("p", {**GOOD, "cpu_users": 3, "cpu_spawn_rate": 1.5})
    assert (staggered.for_route("cpu").ramp_s, staggered.for_route("io_read").ramp_s) == (2, 1)
    for route in ("io_read", "io_create"):
        assert profile.for_route(route) == profile
        assert profile.for_route(route).users == 10


def test_io_read_users_shape_only_the_io_read_route() -> None:
    profile = parse_profile("p", {**GOOD, "io_read_users": 4, "io_read_spawn_rate": 2})
    io_read = profile.for_route("io_read")
    assert (io_read.users, io_read.spawn_rate, io_read.ramp_s) == (4, 2, 2)
    assert profile.for_route("cpu") == profile and profile.for_route("io_create") == profile


@pytest.mark.parametrize(("change", "message"), [
    ({"users": -1}, "'users' must be a positive number"),
    ({"users": "many"}, "'users' must be a positive number"),
    ({"min_hold_s": 20}, "min_hold_s"),
    ({"precision": 5}, "fraction of the mean"),
    ({"precision": -0.1}, "'precision' must be a positive number"),
    ({"burst": 1}, "unknown key 'burst'"),
    ({"timeout_s": None}, "'timeout_s' is missing"),
    ({"cpu_ms": 0}, "'cpu_ms' must be a positive number"),
    ({"cpu_users": 0}, "'cpu_users' must be a positive number"),
    ({"cpu_users": 2.5}, "'cpu_users' must be a positive number"),
    ({"cpu_spawn_rate": -1}, "'cpu_spawn_rate' must be a positive number"),
    ({"io_read_users": 1.5}, "'io_read_users' must be a positive number"),
    ({"io_read_spawn_rate": 0}, "'io_read_spawn_rate' must be a positive number"),
])
def test_bad_profiles_are_named(change: dict[str, object], message: str) -> None:
    table = {**GOOD, **change}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(LoadError, match=message):
        parse_profile("p", table)


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(LoadError, match="valid: .*quick"):
        load_profile("fast")


class _Handler(JsonHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/cpu/":
            self.answer(200, {"ct": 1})
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode()
        ok = "title=" in body and "content=" in body
        self.answer(503 if ok else 400, {"error": "pool_timeout" if ok else "bad_request"})


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


SHORT = Profile(name="t", users=4, spawn_rate=4, min_hold_s=3, max_hold_s=3, precision=0,
                timeout_s=5)


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
    # times are relative to the load's start; the shape's backstop ends it
    assert 0 <= min(float(r["t_s"]) for r in rows)
    assert max(float(r["t_s"]) for r in rows) < SHORT.max_duration_s + 5


def test_the_cpu_route_runs_the_profiles_cpu_users(tiny_server: str, tmp_path: Path) -> None:
    profile = replace(SHORT, cpu_users=2)
    run = LocustRun(tiny_server, "cpu", profile, tmp_path)
    assert run.profile.users == 2 and json.loads(run.profile_json())["users"] == 2
    run.start()
    assert run.wait(timeout=60) == 0
    with (tmp_path / "stats_history.csv").open() as handle:
        counts = {int(r["User Count"]) for r in csv.DictReader(handle)}
    assert max(counts) == 2  # Locust ran 2 users, not SHORT's 4
    assert cell_metrics(tmp_path, run.profile)["hold_users"] == 2


def test_a_launched_run_waits_at_its_gate_until_start(tiny_server: str,
                                                      tmp_path: Path) -> None:
    """launch() starts Locust but holds its test: no request and no start marker until
    start() opens the gate (the runner verifies the server meanwhile); the test's start is
    then the gate's opening. A launched run stopped at its gate leaves no file behind."""
    run = LocustRun(tiny_server, "cpu", SHORT, tmp_path / "a")
    run.launch()
    time.sleep(4)  # Locust's start-up is about 1.1 s
    assert run.exit_code() is None
    # Locust has made its CSV files, but its test has not begun: no marker, no request.
    assert not [p for p in run.live_dir.iterdir() if p.name.startswith(("start.", "responses."))]
    opened = time.time()
    run.start()
    log = RequestLog(run.live_dir)
    deadline = time.monotonic() + 30
    while log.start() is None:
        assert time.monotonic() < deadline, "the test did not start when the gate opened"
        time.sleep(0.05)
    assert opened <= log.start() < opened + 2
    assert run.wait(timeout=60) == 0
    assert cell_metrics(tmp_path / "a", SHORT)["total_successes"] > 50

    held = LocustRun(tiny_server, "cpu", SHORT, tmp_path / "b")
    held.launch()
    pid = held.pids()[0]
    time.sleep(2)
    held.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert list((tmp_path / "b").iterdir()) == []
    # Forked processes start before any gate: such a run is launched by start() alone.
    assert not LocustRun(tiny_server, "cpu", SHORT, tmp_path, processes=2).can_launch_early


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
                    Profile("t", 2, 2, 1, 1, 0, 2), tmp_path)
    run.start()
    run.wait(timeout=60)
    kinds = cell_metrics(tmp_path, SHORT)["failures_by_kind"]
    assert list(kinds) == ["connection refused"], kinds


def test_stop_ends_locust_and_keeps_its_files(tiny_server: str, tmp_path: Path) -> None:
    run = LocustRun(tiny_server, "cpu", Profile("t", 4, 4, 60, 60, 0, 5), tmp_path, processes=2)
    run.start()
    with pytest.raises(TimeoutError):
        run.wait(timeout=4)
    pid = run.pids()[0]
    run.stop()
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert (tmp_path / "responses.csv").is_file()


def test_the_request_log_grows_while_locust_runs_and_the_stop_file_ends_it(
        tiny_server: str, tmp_path: Path) -> None:
    """The runner judges the steady state from the live log, then asks Locust to stop."""
    run = LocustRun(tiny_server, "cpu", Profile("t", 4, 4, 120, 120, 0, 5), tmp_path,
                    processes=2)
    run.start()
    log = RequestLog(run.live_dir, fallback_start=run.started_at)
    deadline = time.monotonic() + 30
    while log.poll() == 0 or len(log.responses()) < 100:
        assert time.monotonic() < deadline, "no request logged while Locust runs"
        time.sleep(0.2)
    assert log.start() is not None and abs(log.start() - time.time()) < 30
    assert run.exit_code() is None  # still running: the rows came from the live log
    t_stop = time.monotonic()
    run.request_stop()
    assert run.wait(timeout=20) == 0
    assert time.monotonic() - t_stop < 10  # not the 120 s hold
    with (tmp_path / "responses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= len(log.responses())


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_metrics_definitions(tmp_path: Path) -> None:
    profile = Profile("t", users=10, spawn_rate=5, min_hold_s=10, max_hold_s=40, precision=0,
                      timeout_s=5)
    rows: list[list[object]] = []
    # 5 successes/s during the 2 s ramp, then 48/s (12 a 0.25 s bin), 100 ms each, evenly
    # spread; 1 timeout/s.
    for second in range(42):
        per_second = 48 if second >= 2 else 5
        for i in range(per_second):
            rows.append([second + (i + 0.5) / per_second, "cpu", 100.0, 1, ""])
        if second >= 2:
            rows.append([second + 0.5, "cpu", 5000.0, 0, "timeout"])
    _write(tmp_path / "responses.csv", ["t_s", "name", "response_time_ms", "ok", "kind"], rows)
    _write(tmp_path / "stats_history.csv", ["Timestamp", "Name", "Requests/s", "Failures/s"],
           [[1, "Aggregated", 40, 1], [2, "Aggregated", 55, 2], [3, "cpu", 999, 0]])
    _write(tmp_path / "resources.csv",
           ["t_s", "server_rss_mib", "server_cpu_pct", "server_threads", "db_connections",
            "db_rss_mib", "locust_cpu_pct", "steal_pct", "outside_cpu_pct"],
           [[1, 50, 90, 3, 1, 100, 95, 0, 5], [2, 60, 95, 5, 4, 120, 96, 2, 15],
            [3, 55, 97, 4, 2, 110, 97, 4, 25]])
    m = cell_metrics(tmp_path, profile, end_s=42.0)
    assert m["warmup_s"] == 2.0 and m["window_s"] == 40.0 and not m["unsteady"]
    assert m["steady_srps"] == 48.0
    # perfectly even arrivals: every batch holds the same count, so the batches' interval is
    # a point, reported at the floor of ±1% (bench/steady.py MIN_RELATIVE_HALF_WIDTH)
    assert m["steady_srps_ci95"] == [47.52, 48.48]
    assert m["total_successes"] == 10 + 40 * 48 and m["total_failures"] == 40
    assert m["failures_by_kind"] == {"timeout": 40}
    assert m["steady_failures_per_s"] == 1.0
    assert m["max_srps"] == 53.0  # 55 - 2, Aggregated rows only
    assert m["p50_ms"] == 100.0 and m["p99_ms"] > 100.0
    assert m["peak_server_rss_mib"] == 60 and m["peak_db_connections"] == 4
    assert m["peak_server_db_rss_mib"] == 180
    assert m["load_generator_saturated"] is True
    # machine noise over the steady window only (samples at t >= 2 s)
    assert m["mean_steal_pct"] == 3.0 and m["mean_outside_cpu_pct"] == 20.0
    # Little's law: (1920 * 0.1 s + 40 * 5 s) / 40 s = 9.8 in flight
    assert m["mean_in_flight"] == 9.8
    assert m["rss_per_in_flight_kib"] == round((180 - 150) * 1024 / 9.8, 1)


def test_noisy_counts_give_an_interval_around_the_rate(tmp_path: Path) -> None:
    """A Poisson stream of 40/s: the interval is not a point, and it holds the rate."""
    import numpy as np

    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(1 / 40, 40 * 60))
    _write(tmp_path / "responses.csv", ["t_s", "name", "response_time_ms", "ok", "kind"],
           [[round(t, 4), "cpu", 10.0, 1, ""] for t in times])
    m = cell_metrics(tmp_path, Profile("t", 1, 1, 10, 60, 0, 5), end_s=59.0)
    low, high = m["steady_srps_ci95"] or (0, 0)
    assert low < 40 < high and 0 < high - low < 8


@pytest.mark.parametrize(("server_cpu", "measured"), [(97, True), (12, False)])
def test_a_hold_in_which_no_request_ended(tmp_path: Path, server_cpu: float,
                                          measured: bool) -> None:
    """No request in responses.csv: 0 sRPS over the window, flagged (no finite half-width).
    With a busy server that is the measurement (requests outlast the hold); with an idle
    one nothing shows the load arrived, and the runner fails the cell."""
    from bench.runner import empty_load_reason

    _write(tmp_path / "responses.csv", ["t_s", "name", "response_time_ms", "ok", "kind"], [])
    _write(tmp_path / "resources.csv", ["t_s", "server_cpu_pct", "locust_cpu_pct"],
           [[t, server_cpu, 5] for t in range(1, 17)])
    m = cell_metrics(tmp_path, Profile("t", 200, 100, 8, 14, 0.05, 300), end_s=16.0)
    assert m["total_requests"] == 0
    assert m["steady_srps"] == 0.0 and m["steady_srps_ci95"] == [0.0, 0.0]
    assert m["steady_half_width_pct"] == math.inf and m["window_s"] == 14.0
    reason = empty_load_reason(m)
    if measured:
        assert reason is None
    else:
        assert reason is not None and "12% of a core" in reason, reason
    assert empty_load_reason({**m, "mean_server_cpu_pct": None}) is not None  # --target
    assert empty_load_reason({**m, "total_requests": 3, "mean_server_cpu_pct": 0}) is None


def test_the_slope_of_throughput_on_the_machines_speed(tmp_path: Path) -> None:
    """Blocks of 10 s alternate a fast machine (probe 3.0 ms, 100 sRPS) and a slow one
    (probe 4.5 ms, 70 sRPS): the slope is -20 sRPS per ms of probe, found within its
    standard error's reach; a machine at one speed gives a probe but no slope."""
    import numpy as np

    rng = np.random.default_rng(11)
    times, probes = [], []
    for block in range(6):
        fast = block % 2 == 0
        start = 10.0 * block
        times.extend(start + np.sort(rng.uniform(0, 10, 1000 if fast else 700)))
        probes.extend([start + s + 0.5, 3.0 if fast else 4.5] for s in range(10))
    _write(tmp_path / "responses.csv", ["t_s", "name", "response_time_ms", "ok", "kind"],
           [[round(t, 4), "io_create", 10.0, 1, ""] for t in times])
    _write(tmp_path / "resources.csv", ["t_s", "machine_probe_ms"], probes)
    m = cell_metrics(tmp_path, Profile("t", 1, 1, 10, 60, 0, 5), end_s=60.0)
    assert m["window_s"] == 59.0  # after the 1-s ramp
    # the probes of the window: 29 fast ones (the one at 0.5 s is in the ramp), 30 slow
    assert m["machine_probe_ms"] == pytest.approx((29 * 3.0 + 30 * 4.5) / 59, abs=1e-3)
    slope, se = m["speed_slope"], m["speed_slope_se"]
    assert slope is not None and se is not None and 0 < se < 5
    assert abs(slope - -20.0) < 3 * se, (slope, se)

    _write(tmp_path / "resources.csv", ["t_s", "machine_probe_ms"],
           [[t + 0.5, 3.0] for t in range(60)])
    m = cell_metrics(tmp_path, Profile("t", 1, 1, 10, 60, 0, 5), end_s=60.0)
    assert m["machine_probe_ms"] == 3.0 and m["speed_slope"] is None
    _write(tmp_path / "resources.csv", ["t_s", "server_cpu_pct"], [[1, 50]])
    assert "machine_probe_ms" not in cell_metrics(tmp_path, Profile("t", 1, 1, 10, 60, 0, 5),
                                                  end_s=60.0)


def test_the_resource_sampler_probes_the_machine_on_each_core(tmp_path: Path) -> None:
    """machine_probe_ms is a real timing of the probe loop, the mean of about ten probes a
    second (bench/machine.py SpeedProbe); the probing thread leaves the caller's CPU
    affinity alone, and no CPU to probe leaves the column empty."""
    import os

    from bench.machine import SpeedProbe

    before = os.sched_getaffinity(0)
    probe = SpeedProbe(sorted(before), interval_s=0.05)
    probe.start()
    time.sleep(0.6)
    first = probe.take()
    probe.stop()
    assert first is not None and 0 < first < 1000
    assert os.sched_getaffinity(0) == before

    from bench.resources import ResourceSampler

    sampler = ResourceSampler(tmp_path / "resources.csv", list, list, list, db_user="u",
                              interval_s=0.5)
    sampler.start()
    time.sleep(1.3)
    sampler.stop()
    with (tmp_path / "resources.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 2 and all(0 < float(r["machine_probe_ms"]) < 1000 for r in rows)
    off = ResourceSampler(tmp_path / "r.csv", list, list, list, db_user="u", probe_cpus=[])
    off.start()
    time.sleep(0.6)
    off.stop()
    with (tmp_path / "r.csv").open() as handle:
        assert all(r["machine_probe_ms"] == "" for r in csv.DictReader(handle))
