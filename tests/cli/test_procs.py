"""cli.procs: what perch demo, the benchmarks and the tests use to run servers."""

from __future__ import annotations

import os
import signal

import pytest

from cli.procs import terminate_as_interrupt


def test_sigterm_inside_becomes_keyboard_interrupt_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
