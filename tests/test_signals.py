"""signals_interrupt: SIGTERM and SIGINT become Interrupted, a KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import time

import pytest

from bench.signals import Interrupted, signals_interrupt


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_signal_raises_interrupted_naming_it(sig: signal.Signals) -> None:
    with pytest.raises(KeyboardInterrupt) as caught, signals_interrupt():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # not reached: the handler raises as soon as os.kill returns
    assert isinstance(caught.value, Interrupted)
    assert str(caught.value) == sig.name


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals_interrupt():
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
