"""Stop signals as Python interrupts, so a stopped task cleans up (or cancels what it started) like Ctrl-C.

CI systems cancel with SIGTERM (GitHub Actions: SIGINT, then SIGTERM), a closed terminal sends SIGHUP; Python
only turns SIGINT into KeyboardInterrupt. Each keeps its exit code: 128 + the signal's number.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM (CI cancelling, `kill`) or SIGHUP (the terminal went away), with its number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Received(list):
    """The stop signals received so far, in order. While ``raising`` is true a signal also raises Interrupted;
    a caller that has started something it must shut down cleanly sets it false and polls the list instead, so
    that no later signal (a second Ctrl-C, CI's SIGTERM after its SIGINT) can cut that shutdown short."""

    raising = True


@contextmanager
def signals_as_interrupts(once: bool = False, final: bool = False) -> Iterator[Received]:
    """Within: each stop signal raises Interrupted; the list yielded records the signals received (a library
    that catches KeyboardInterrupt and raises its own error loses the number, the list keeps it). ``once``: only
    the first one raises, as if ``raising`` were set false right then, so the code handling it is not cut short.
    ``final``: when one came, stop signals stay ignored after the block: the process is ending because of it,
    and no later one may change how (its exit code, its last line)."""
    received = Received()

    def handler(signum, frame):
        received.append(signum)
        if received.raising:
            received.raising = not once
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, action in previous.items():
            signal.signal(signum, signal.SIG_IGN if final and received else action)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleaning up must not be cut short by a second Ctrl-C."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)
