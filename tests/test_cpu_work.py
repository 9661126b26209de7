"""cpu/ with a CPU-time budget (the profiles' cpu_ms): the app's loop runs for that much of
its thread's CPU time and says how many turns that was; verification checks the sum for
those turns; the setting refuses what is not a budget."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import JsonHandler

from bench.verify import VerificationError, expected_ct, verify_cpu

APP = Path(__file__).resolve().parent.parent / "shared_app"
sys.path.insert(0, str(APP))

from posts.validation import cpu_answer, cpu_for  # noqa: E402


def test_the_budget_is_the_threads_cpu_time_and_the_sum_is_the_studys() -> None:
    cpu0 = time.thread_time()
    ct, turns = cpu_for(100)
    used_ms = (time.thread_time() - cpu0) * 1000
    assert turns > 0 and ct == expected_ct(turns)
    assert 100 <= used_ms < 100 + 20  # at most one chunk of 10,000 turns over
    assert cpu_answer(1000, 0) == {"ct": expected_ct(1000)}  # no budget: the study's loop
    assert set(cpu_answer(1000, 5)) == {"ct", "turns"}


def test_waiting_for_the_gil_does_not_spend_the_budget() -> None:
    """A second Python thread holds the GIL half the time: the request takes longer on the
    clock, but costs the same CPU, where a wall-clock budget would halve its work."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    rival = threading.Thread(target=spin, daemon=True)
    rival.start()
    try:
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        cpu_for(200)
        wall_ms = (time.perf_counter() - wall0) * 1000
        used_ms = (time.thread_time() - cpu0) * 1000
    finally:
        stop.set()
        rival.join()
    assert 200 <= used_ms < 220
    assert wall_ms > 1.5 * used_ms, (wall_ms, used_ms)


def test_the_setting_refuses_what_is_not_a_budget() -> None:
    for raw in ("-1", "nan", "abc"):
        result = subprocess.run(
            [sys.executable, "-c", "import benchapp.settings"], cwd=APP, capture_output=True,
            text=True, timeout=60, env={**os.environ, "POSTS_CPU_MS": raw,
                                        "DJANGO_SECRET_KEY": "test-only"})
        assert result.returncode != 0
        assert "POSTS_CPU_MS must be" in result.stderr, result.stderr[-500:]


class _Answers(JsonHandler):
    body: Any = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.answer(200, type(self).body)


@pytest.fixture
def answering() -> Iterator[tuple[str, type[_Answers]]]:
    handler = type("Handler", (_Answers,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_verification_checks_the_sum_for_the_turns_the_server_says(answering) -> None:
    base, handler = answering
    handler.body = {"ct": expected_ct(5000), "turns": 5000}
    assert verify_cpu(base, 1000, 10, cpu_ms=100) == 5000
    assert verify_cpu(base, 1000, 10) == 5000  # a --target started with a budget
    for wrong in ({"ct": expected_ct(5000) + 1, "turns": 5000}, {"ct": 0, "turns": 0},
                  {"ct": expected_ct(5000), "turns": 5000, "extra": 1}):
        handler.body = wrong
        with pytest.raises(VerificationError, match="'turns': turns > 0"):
            verify_cpu(base, 1000, 10, cpu_ms=100)
    # a server on the fixed loop, where the run asked for a budget: it did other work
    handler.body = {"ct": expected_ct(1000)}
    with pytest.raises(VerificationError, match="a budget of 100 ms"):
        verify_cpu(base, 1000, 10, cpu_ms=100)
    assert verify_cpu(base, 1000, 10) is None  # the fixed loop, as asked
