"""The wake objects: how an idle worker learns, for one GET, that there is new work.

A worker with nothing to do cannot afford to poll every shard (one request per
shard per poll), and a long poll interval makes the first job after a quiet spell
wait. Instead an idle worker watches one small object, ``wake/any``, whose ETag
changes on every write:

- A worker about to go idle *arms* it: it writes ``{"listening": true}`` unless it
  already says so, then claims once more (so nothing written before the arming is
  missed), then reads it once per poll interval.
- Whoever makes work appear *rings* it after the change is durable (producers after
  a segment, workers after releasing leases or scheduling a retry): they read it and
  rewrite it (``listening: false``) only when a worker is listening. Busy queues
  therefore pay one GET per ring, and a PUT only when someone waits.

Why no write is missed: a ring reads the object after its change is durable; if the
read comes before a worker armed it, that worker's claim after arming sees the
change; if after, the ring rewrites the object and the worker sees the new ETag.

Rings of one process never overlap, and read ``wake/any`` at most once per
:data:`RING_INTERVAL` (events in between get one more ring at its end, never none):
a ring costs at most one GET per segment written (a GET is priced at 8% of a PUT),
at most ten a second, and delays a wake-up by at most that interval. ``wake/high``
is rewritten unconditionally when a message with priority > 0 was written, at most
once per :data:`HIGH_RING_INTERVAL` per process (an event inside the interval gets
one deferred ring at its end, never none): busy workers read it once a second to
look at the express lanes of shards they are not claiming from. A ring that fails
is logged; idle workers' periodic sweeps find the work later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec

from s3queue import sources
from s3queue.core import layout
from s3queue.core.catalog import ensure_exists
from s3queue.errors import QueueError
from s3queue.storage import Storage

log = logging.getLogger("s3queue.wake")

#: Seconds between two rewrites of ``wake/high`` by one process.
HIGH_RING_INTERVAL = 1.0
#: Seconds between two reads of ``wake/any`` by one ringing process: a busy producer
#: pays at most ten GETs a second to know whether a worker waits, and a waiting
#: worker hears of the first segment after a quiet spell at once.
RING_INTERVAL = 0.1


class WakeState(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a wake object."""

    listening: bool
    by: str
    at: float


def _listening(data: bytes) -> bool:
    try:
        return msgspec.json.decode(data, type=WakeState).listening
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True  # not ours or damaged: ringing rewrites it, which is safe


class Bell:
    """Rings of one wake object by one process, one at a time and at most one per
    ``interval`` seconds: ``ring()`` returns at once; ``action`` does the ring."""

    def __init__(
        self,
        action: Callable[[], Awaitable[None]],
        name: str,
        *,
        interval: float = 0.0,
        monotonic: Callable[[], float] = sources.monotonic,
    ) -> None:
        self._action = action
        self.name = name
        self.interval = interval
        self._monotonic = monotonic
        self._rung_at = -float("inf")
        self._due = False
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def ring(self) -> None:
        """Announce a change that is already durable."""
        self._due = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"s3queue-ring-{self.name}")

    async def _run(self) -> None:
        while self._due:
            wait = self._rung_at + self.interval - self._monotonic()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)  # the rate limit
            self._due = False
            self._rung_at = self._monotonic()
            try:
                await self._action()
            except QueueError as error:
                log.warning(
                    "could not ring %s (idle workers find the work later): %s", self.name, error
                )

    async def close(self) -> None:
        """Ring what is due now, without waiting out the interval, then stop."""
        self._hurry.set()
        if self._task is not None:
            await self._task


class Wake:
    """One queue's wake objects, as this process uses them."""

    def __init__(self, storage: Storage, queue: str, writer: str) -> None:
        self.storage = storage
        self.queue = queue
        self.writer = writer
        self.key = layout.wake_key(queue)
        self.high_key = layout.wake_key(queue, high=True)
        self._any = Bell(self._ring_any, self.key, interval=RING_INTERVAL)
        self._high = Bell(self._ring_high, self.high_key, interval=HIGH_RING_INTERVAL)
        self._seen: dict[str, str | None] = {self.key: None, self.high_key: None}
        #: PUTs that woke a listening worker (reads are counted by the store).
        self.rings = 0

    # --- ringing -------------------------------------------------------------------------

    def ring(self, *, high: bool = False) -> None:
        """Announce new work that is already durable (returns at once)."""
        self._any.ring()
        if high:
            self._high.ring()

    def _body(self, listening: bool) -> bytes:
        return msgspec.json.encode(
            WakeState(listening=listening, by=self.writer, at=sources.wall())
        )

    async def _ring_any(self) -> None:
        stored = await self.storage.get(self.key)
        if stored is not None and _listening(stored.data):
            await self.storage.put(self.key, self._body(False))
            self.rings += 1

    async def _ring_high(self) -> None:
        await self.storage.put(self.high_key, self._body(False))

    async def close(self) -> None:
        await asyncio.gather(self._any.close(), self._high.close())

    # --- listening -----------------------------------------------------------------------

    async def arm(self) -> None:
        """Before going idle: make ringers write (unless the object already says a
        worker listens), and remember its version. Claim once more after this."""
        stored = await self.storage.get(self.key)
        if stored is not None and _listening(stored.data):
            self._seen[self.key] = stored.etag
            return
        if stored is None:
            # Never armed, or the queue was deleted: never recreate it in part.
            await ensure_exists(self.storage, self.queue)
        self._seen[self.key] = await self.storage.put(self.key, self._body(True))

    async def changed(self, *, high: bool = False) -> bool:
        """One GET: whether the object changed since this process last saw it (True
        when it never saw it: the caller then looks everywhere once)."""
        key = self.high_key if high else self.key
        stored = await self.storage.get(key)
        etag = "" if stored is None else stored.etag
        changed = etag != self._seen[key]
        self._seen[key] = etag
        return changed
