"""Perch as a child process: a free port, the command started with its log, waiting until it
answers, stopping it.

``perch demo``, the tests (tests/procs.py) and the benchmarks (benchmarks/common.py) all start
their servers through this one module, so a server that dies before answering says why (the
tail of its log) wherever it happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from core import PerchError

__all__ = [
    "NotUp",
    "free_port",
    "perch_process",
    "start_perch",
    "stop",
    "terminate_as_interrupt",
    "wait_http",
]

_LOG_TAIL = 2_000  # characters of a dead server's log worth showing


class NotUp(PerchError, RuntimeError):
    """A server exited, or did not answer in time."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` if nothing listens there, else any free port (``preferred=0``: any)."""
    for port in dict.fromkeys((preferred, 0)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise NotUp("no free port")


def start_perch(
    args: list[str],
    env: Mapping[str, str],
    log: Path,
    *,
    own_session: bool = False,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m cli.main ARGS`` (the ``perch`` command) with ``env`` over this environment,
    its output in ``log``.

    ``own_session``: the child (and anything it starts) leaves this terminal's process group,
    so a Ctrl-C reaches only the parent, which then stops it with :func:`stop`.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:  # the child keeps a descriptor of its own
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return f"; {log}:\n{log.read_text(errors='replace')[-_LOG_TAIL:]}"
    except OSError:
        return ""


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    *,
    timeout_s: float = 30.0,
    log: Path | None = None,
    status: int | None = None,
) -> None:
    """Return once ``url`` answers (with ``status``, if given); raise :class:`NotUp` if ``proc``
    exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotUp(f"{proc.args!r} exited with {proc.returncode} before answering {url}{_tail(log)}")
        try:
            if status in (None, httpx.get(url, timeout=1.0).status_code):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise NotUp(f"nothing answered {url} within {timeout_s:g} s{_tail(log)}")


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        # A child in a session of its own is its process group's leader: signal the whole group.
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop(*procs: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM every process still running, then SIGKILL those that outlast ``timeout_s``."""
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()


@contextmanager
def perch_process(
    args: list[str],
    env: Mapping[str, str],
    ready_url: str,
    log: Path,
    *,
    timeout_s: float = 30.0,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_perch`, answering at ``ready_url``; stopped when the block ends."""
    proc = start_perch(args, env, log, cwd=cwd)
    try:
        wait_http(ready_url, proc, timeout_s=timeout_s, log=log)
        yield proc
    finally:
        stop(proc)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt, so ``finally`` blocks stop the children.

    Python's default SIGTERM ends the process at once: a parent stopped by a service manager or
    ``timeout`` would leave its servers (each in a session of its own) running, holding the ports.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
