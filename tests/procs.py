"""Child processes for tests: the one helper ``perch demo`` and the benchmarks use too
(cli/procs.py, since cli must not import tests), and a poll for what they do in the background."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from cli.procs import NotUp, free_port, perch_process, start_perch, stop, wait_http

__all__ = ["NotUp", "free_port", "perch_process", "start_perch", "stop", "until", "wait_http"]

T = TypeVar("T")


def until(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.1) -> T:
    """``check()``'s first truthy value, polled until ``timeout_s``; AssertionError after that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not reached in {timeout_s:g} s")
