"""Stop signals as interrupts, and the quiet mode a shutdown in progress needs (real signals to this process)."""

import os
import signal

import pytest

from amltrain.signals import Interrupted, signals_as_interrupts


def test_a_signal_raises_until_the_caller_asks_for_requests_instead():
    before = signal.getsignal(signal.SIGTERM)
    with signals_as_interrupts() as received:
        with pytest.raises(Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.1)  # a point where the handler has surely run
        assert raised.value.signum == signal.SIGTERM
        received.raising = False  # shutting down: later signals are only counted
        for signum in (signal.SIGINT, signal.SIGHUP):
            os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 0.1)
        assert received == [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    assert signal.getsignal(signal.SIGTERM) == before


def test_once_only_the_first_signal_raises():
    with signals_as_interrupts(once=True) as received:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)
        os.kill(os.getpid(), signal.SIGINT)  # handling the first: this one must not cut it short
        signal.sigtimedwait([], 0.1)
        assert received == [signal.SIGINT, signal.SIGINT]


def test_final_keeps_stop_signals_ignored_once_one_came():
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with signals_as_interrupts(final=True):
            pass
        assert signal.getsignal(signal.SIGINT) == previous[signal.SIGINT]  # none came: as before
        with pytest.raises(Interrupted):
            with signals_as_interrupts(final=True):
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0.1)
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)
