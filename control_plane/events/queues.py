"""Where ``perch consume`` pulls signed event-batch messages from: Cloudflare Queues or a directory.

Both sources deliver *at least once*: a message is leased by ``pull``, removed by ``ack`` and put
back by ``retry``; a lease that is neither acked nor retried before its visibility timeout ends
makes the message deliverable again (``attempts`` one higher). The consumer acks only after its
group has committed, and its per-event dedup absorbs every redelivery. Bodies are opaque bytes
here; :func:`core.queue.parse_message` reads them.

:class:`DirectoryQueue` is the local queue of ``perch edge dev`` and ``make demo``, so the embedded
default runs the production path. One file per message:

- ``tmp/``: a producer writes ``<name>.tmp``, fsyncs it, and ``os.replace``-s it into ``ready/``
  (same filesystem, so the message appears whole or not at all; a producer killed mid-write
  leaves its file in ``tmp/``, never a partial message in ``ready/``);
- ``ready/<id>.<deliveries>.msg``: waiting; ``<id>`` is ``<ns>-<pid>-<counter>-<random>``, so names
  sort by enqueue time;
- ``leased/<id>.<deliveries>.<expiry ns>.<token>.lease``: taken by one ``os.rename`` from
  ``ready/``. Of several processes renaming the same file exactly one succeeds; the others get
  ``FileNotFoundError`` and move on. The lease string handed out *is* this file name.

``ack`` unlinks the lease file, ``retry`` renames it back to ``ready/`` (or, with a delay, to a
fresh lease nobody holds that expires when the delay ends). Any ``pull`` first returns expired
leases to ``ready/``. A lease that expired and was taken again has a new name, so the old holder's
``ack`` or ``retry`` finds nothing and is a no-op: the message is not lost, it is delivered to the
new holder (Cloudflare, by contrast, accepts an ack after the timeout; both are at-least-once).
Lease expiry uses the wall clock, which every process on the host shares. Lease renames and acks
are not fsynced: after a power loss a message may be delivered again, never lost.

Cloudflare's HTTP pull consumer is the other source: :mod:`control_plane.events.cloudflare_queue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.errors import PerchError
from core.queue import MAX_MESSAGE_BYTES

__all__ = [
    "DirectoryQueue",
    "Message",
    "MessageSource",
    "QueueDepth",
    "QueueError",
    "check_pull",
]

log = logging.getLogger("perch.queues")


@dataclass(frozen=True, slots=True)
class Message:
    lease: str  # what ack/retry take (Cloudflare's lease_id; the directory queue's lease file name)
    body: bytes  # the message text as UTF-8 bytes
    attempts: int  # deliveries so far, 1 on the first
    id: str


@runtime_checkable
class MessageSource(Protocol):
    def pull(self, max_messages: int = 100, visibility_timeout_s: float = 60.0) -> list[Message]:
        """Lease at most ``max_messages`` messages, oldest first where the source can tell."""

    def ack(self, leases: Sequence[str]) -> None:
        """Done with these: never delivered again (a lease that already expired may be a no-op)."""

    def retry(self, leases: Sequence[str], delay_s: float = 0.0) -> None:
        """Back to the queue, deliverable again after ``delay_s``."""


class QueueError(PerchError, RuntimeError):
    """The queue refused or failed a request.

    ``retriable`` says whether the same request may succeed later (429, 5xx, a dropped
    connection); ``status`` is the HTTP status (None when no answer came), ``retry_after_s``
    Cloudflare's ``Retry-After`` if it sent one.
    """

    def __init__(
        self, message: str, *, status: int | None, retriable: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable
        self.retry_after_s = retry_after_s


def check_pull(max_messages: int, visibility_timeout_s: float) -> None:
    """What every source refuses before asking anything of its queue."""
    if max_messages < 1:
        raise ValueError(f"max_messages={max_messages}, must be >= 1")
    if not visibility_timeout_s > 0:
        raise ValueError(f"visibility_timeout_s={visibility_timeout_s}, must be > 0")


# ---------------------------------------------------------------------------------------------
# The directory queue

_ID = r"\d{20}-\d+-\d{8}-[0-9a-f]{8}"
_READY = re.compile(rf"^(?P<id>{_ID})\.(?P<n>\d+)\.msg$")
_LEASED = re.compile(rf"^(?P<id>{_ID})\.(?P<n>\d+)\.(?P<expiry>\d+)\.(?P<token>[0-9a-f]{{16}})\.lease$")

_counter = itertools.count()
_clock_lock = threading.Lock()
_last_ns = 0


def _enqueue_ns() -> int:
    # Never backwards within a process, so one producer's messages keep their order even if the
    # wall clock is stepped back; across processes, ties and small skews order arbitrarily.
    global _last_ns  # noqa: PLW0603
    with _clock_lock:
        _last_ns = max(_last_ns + 1, time.time_ns())
        return _last_ns


@dataclass(frozen=True, slots=True)
class QueueDepth:
    ready: int  # waiting to be pulled
    leased: int  # pulled and not yet acked (expired ones until a pull returns them), or retried with a delay

    @property
    def total(self) -> int:
        return self.ready + self.leased


class DirectoryQueue:
    """A queue in a directory, shared by any number of producer and consumer processes on one host."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.ready = self.path / "ready"
        self.leased = self.path / "leased"
        self.tmp = self.path / "tmp"
        for d in (self.ready, self.leased, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._clock = clock

    def __repr__(self) -> str:
        return f"DirectoryQueue({str(self.path)!r})"

    # -- producer ---------------------------------------------------------------------------

    def send_batch(self, messages: Sequence[str]) -> None:
        """Enqueue ``messages`` in order, each durable (fsynced) before this returns.

        A message larger than the edge may send (:data:`core.queue.MAX_MESSAGE_BYTES`) is refused
        before anything is written, so local runs fail where Cloudflare would.
        """
        bodies = [m.encode("utf-8") for m in messages]
        for i, body in enumerate(bodies):
            if len(body) > MAX_MESSAGE_BYTES:
                raise ValueError(f"message {i} is {len(body)} bytes, over the limit of {MAX_MESSAGE_BYTES}")
        pid = os.getpid()
        for body in bodies:
            name = f"{_enqueue_ns():020d}-{pid}-{next(_counter) % 10**8:08d}-{secrets.token_hex(4)}.0.msg"
            tmp = self.tmp / f"{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.ready / name)
        if bodies:
            _fsync_dir(self.ready)

    async def asend_batch(self, messages: Sequence[str]) -> None:
        """:meth:`send_batch` off the event loop (it fsyncs every message)."""
        await asyncio.to_thread(self.send_batch, messages)

    # -- consumer ---------------------------------------------------------------------------

    def pull(self, max_messages: int = 100, visibility_timeout_s: float = 60.0) -> list[Message]:
        """Lease at most ``max_messages`` messages, oldest first; fewer (or none) if others won them."""
        check_pull(max_messages, visibility_timeout_s)
        now_ns = self._now_ns()
        self._reclaim(now_ns)
        expiry = now_ns + math.ceil(visibility_timeout_s * 1e9)
        # The oldest few times what we want: with several consumers racing for the same oldest
        # files, the losers go on to the next ones instead of coming back nearly empty.
        names = heapq.nsmallest(max_messages * 4, (n for n in _listdir(self.ready) if _READY.match(n)))
        out: list[Message] = []
        for name in names:
            m = _READY.match(name)
            assert m is not None
            attempts = int(m["n"]) + 1
            lease = f"{m['id']}.{attempts}.{expiry}.{secrets.token_hex(8)}.lease"
            try:
                os.rename(self.ready / name, self.leased / lease)
            except FileNotFoundError:  # another consumer took it first
                continue
            try:
                body = (self.leased / lease).read_bytes()
            except FileNotFoundError:  # our lease already expired and was reclaimed
                continue
            out.append(Message(lease=lease, body=body, attempts=attempts, id=m["id"]))
            if len(out) >= max_messages:
                break
        return out

    def ack(self, leases: Sequence[str]) -> None:
        """Delete the leased messages. A lease that expired and was reclaimed is a no-op."""
        for lease in leases:
            _parse_lease(lease)  # all checked before any is acked
        for lease in leases:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.leased / lease)

    def retry(self, leases: Sequence[str], delay_s: float = 0.0) -> None:
        """Put the leased messages back, deliverable now or after ``delay_s`` seconds."""
        if not delay_s >= 0:
            raise ValueError(f"delay_s={delay_s}, must be >= 0")
        parsed = [(lease, _parse_lease(lease)) for lease in leases]
        for lease, m in parsed:
            if delay_s > 0:
                # A lease nobody holds: the next pull after it expires puts the message back.
                expiry = self._now_ns() + math.ceil(delay_s * 1e9)
                target = self.leased / f"{m['id']}.{m['n']}.{expiry}.{secrets.token_hex(8)}.lease"
            else:
                target = self.ready / f"{m['id']}.{m['n']}.msg"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.leased / lease, target)

    def depth(self) -> QueueDepth:
        """How many messages wait and how many are leased, for health and metrics."""
        ready = sum(1 for n in _listdir(self.ready) if _READY.match(n))
        leased = sum(1 for n in _listdir(self.leased) if _LEASED.match(n))
        return QueueDepth(ready=ready, leased=leased)

    def _now_ns(self) -> int:
        return int(self._clock() * 1e9)

    def _reclaim(self, now_ns: int) -> None:
        """Expired leases back to ``ready/``; a rename lost to another process is simply skipped."""
        for name in _listdir(self.leased):
            m = _LEASED.match(name)
            if m is None or int(m["expiry"]) > now_ns:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.leased / name, self.ready / f"{m['id']}.{m['n']}.msg")


def _parse_lease(lease: str) -> re.Match[str]:
    m = _LEASED.match(lease)
    if m is None:  # also keeps a caller's string from naming a path outside leased/
        raise ValueError(f"not a directory-queue lease: {lease!r}")
    return m


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _fsync_dir(path: Path) -> None:
    # Makes the new directory entries durable; platforms that cannot open a directory skip it.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
