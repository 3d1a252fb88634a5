"""The write side: messages become immutable segments, one PUT per batch.

Concurrent ``enqueue`` calls of one process wait together and go out in one
segment. Each segment is created with create-if-absent at the next free sequence
number of a shard's log (or of a timer bucket), so producers never touch consumer
state and never overwrite each other. Invariant: ``enqueue`` returns only after the
segment holding the message is durable (and, for a timer bucket, registered in the
cursor so a consumer will look for it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from s3queue import sources
from s3queue.core import layout
from s3queue.core.blobs import PayloadBlobs
from s3queue.core.catalog import ensure_exists
from s3queue.core.clock import Clock
from s3queue.core.commit import ShardCommitter
from s3queue.core.cursor import RegisterTimer, decode_cursor
from s3queue.core.layout import (
    HIGH_LANE,
    LOG_LANE,
    SEGMENT_MIN_AGE,
    TIMER_BUCKET,
    TIMER_SEAL_MARGIN,
    TIMER_THRESHOLD,
    SegmentRef,
)
from s3queue.core.records import QueueSettings, inline_payload_limit
from s3queue.core.segment import (
    MAX_SEGMENT_BYTES,
    MAX_SEGMENT_MESSAGES,
    Message,
    Segment,
    SegmentCache,
    encode_segment,
)
from s3queue.core.wake import Wake
from s3queue.errors import PreconditionFailed
from s3queue.storage import Storage

log = logging.getLogger("s3queue.producer")

#: A batch is spread over the shards in parts of at least this many messages.
SPREAD_MIN = 250
#: A producer writing to a queue checks at most this often (seconds) that the queue
#: still exists (one GET of queue.json): a segment number it remembers is free in a
#: deleted queue too, so without the check it would write on where nobody reads.
EXISTS_CHECK_INTERVAL = 10.0


@dataclass
class _Waiting:
    message: Message
    future: asyncio.Future[str]


def chunk(messages: list[Message]) -> list[list[Message]]:
    """Split into segment-sized batches (by count and by encoded size)."""
    out: list[list[Message]] = []
    current: list[Message] = []
    size = 0
    for message in messages:
        weight = len(message.payload) + 96
        if current and (len(current) >= MAX_SEGMENT_MESSAGES or size + weight > MAX_SEGMENT_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(message)
        size += weight
    if current:
        out.append(current)
    return out


def lanes(messages: list[Message]) -> list[tuple[int, list[Message]]]:
    """The messages of each log lane, in order: priority > 0 goes to the express lane."""
    high = [m for m in messages if m.priority > 0]
    low = [m for m in messages if m.priority <= 0]
    return [(lane, part) for lane, part in ((HIGH_LANE, high), (LOG_LANE, low)) if part]


def batch_order(messages: list[Message]) -> list[Message]:
    """The messages in the order :func:`lanes` writes them."""
    return [m for _, part in lanes(messages) for m in part]


def _spread(messages: list[Message], shards: int) -> list[list[Message]]:
    """Consecutive parts of about equal size, one per shard, none smaller than
    SPREAD_MIN messages: each part is a PUT of its own, and a worker takes a part
    this size in a claim or two."""
    parts = max(1, min(shards, len(messages) // SPREAD_MIN))
    size, extra = divmod(len(messages), parts) if parts else (0, 0)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        out.append(messages[start:end])
        start = end
    return out


class Producer:
    def __init__(
        self,
        storage: Storage,
        settings: QueueSettings,
        clock: Clock,
        segments: SegmentCache,
        committers: Sequence[ShardCommitter],
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.segments = segments
        #: The shards' cursors: a timer bucket is registered in one before its first
        #: segment is written, and each learns of new segments in its log.
        self.committers = committers
        self.writer = sources.token_hex(8)
        self._nonce = itertools.count()
        #: How many shards ``_shards`` cycles over (they grow with a reshard).
        self._writable = settings.writable(clock())
        self._shards = itertools.cycle(sources.shuffled(range(self._writable)))
        #: Per lane: the next free sequence number as last seen, and when (monotonic)
        #: the write that showed it started.
        self._next_seq: dict[tuple[int, int], tuple[int, float]] = {}
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}
        self._registered: set[tuple[int, int]] = set()
        #: sources.monotonic() when the queue was last known to exist (just opened).
        self._exists_at = sources.monotonic()
        self._waiting: list[_Waiting] = []
        self._flushing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.wake = Wake(storage, settings.name, self.writer)
        #: Payloads over the blob threshold, written before their segments.
        self.blobs = PayloadBlobs(storage, settings.name, inline_payload_limit(settings))

    # --- batching of single enqueues ----------------------------------------------------

    async def enqueue(self, message: Message) -> str:
        (message,) = await self.blobs.externalize([message])
        if message.visible_at - self.clock() > TIMER_THRESHOLD:
            return (await self.write([message]))[0]
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(message, future))
        if self._flushing < self._writable:
            self._flushing += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch = chunk([w.message for w in self._waiting])[0]
                waiting, self._waiting = self._waiting[: len(batch)], self._waiting[len(batch) :]
                try:
                    # Concurrent single enqueues share a segment (one per lane): the
                    # flushes themselves go to different shards.
                    shard = self._next_shard()
                    ids = await self._write_all(
                        [(shard, lane, part) for lane, part in lanes(batch)]
                    )
                except Exception as error:  # each caller learns why its message is not in
                    for w in waiting:
                        if not w.future.done():
                            w.future.set_exception(error)
                    continue
                by_message = dict(zip(map(id, batch_order(batch)), ids, strict=True))
                for w in waiting:
                    if not w.future.done():
                        w.future.set_result(by_message[id(w.message)])
        finally:
            self._flushing -= 1

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.wake.close()

    # --- direct writes --------------------------------------------------------------------

    async def write(self, messages: list[Message]) -> list[str]:
        """Write ``messages`` in as few segments as their size allows, a large batch
        spread over the shards so that workers share it without contending for one
        cursor; their ids in order. Payloads over the blob threshold are written
        first, as blobs of their own."""
        messages = await self.blobs.externalize(messages)
        now = self.clock()
        soon = [m for m in messages if m.visible_at - now <= TIMER_THRESHOLD]
        plan: list[tuple[int, int, list[Message]]] = []
        for lane, part in lanes(soon):
            for spread in _spread(part, self._writable):
                plan.extend((self._next_shard(), lane, batch) for batch in chunk(spread))
        by_bucket: dict[int, list[Message]] = {}
        for message in messages:
            if message.visible_at - now > TIMER_THRESHOLD:
                bucket = int(message.visible_at // TIMER_BUCKET) * TIMER_BUCKET
                by_bucket.setdefault(bucket, []).append(message)
        for bucket, bucket_messages in sorted(by_bucket.items()):
            plan.extend((self._next_shard(), bucket, batch) for batch in chunk(bucket_messages))
        written = dict(
            zip(map(id, (m for *_, b in plan for m in b)), await self._write_all(plan), strict=True)
        )
        return [written[id(m)] for m in messages]

    def _next_shard(self) -> int:
        """The next shard to write to, in turn; after a reshard's notice has run
        out, the new shards take their turns too."""
        writable = self.settings.writable(self.clock())
        if writable != self._writable:
            self._writable = writable
            self._shards = itertools.cycle(sources.shuffled(range(writable)))
        return next(self._shards)

    async def _write_all(self, plan: list[tuple[int, int, list[Message]]]) -> list[str]:
        """Write each (shard, lane or timer bucket, messages) of ``plan`` at once; the
        ids, in the plan's order."""
        jobs = [
            self._write_timer(shard, where, batch)
            if where >= 0
            else self._write_lane(shard, where, batch)
            for shard, where, batch in plan
        ]
        return [mid for ids in await asyncio.gather(*jobs) for mid in ids]

    def _encode(self, messages: list[Message]) -> tuple[Segment, bytes]:
        segment = Segment(
            writer=f"{self.writer}.{next(self._nonce)}",
            created_at=self.clock(),
            messages=messages,
        )
        return segment, encode_segment(segment)

    async def _write_lane(self, shard: int, lane: int, messages: list[Message]) -> list[str]:
        try:
            seq, segment = await self._create(shard, lane, messages)
        finally:
            self.blobs.forget(messages)
        ref = SegmentRef(lane, seq)
        self.segments.put(shard, ref, segment)
        self.committers[shard].log_grew(lane)
        self.wake.ring(high=lane == HIGH_LANE)
        return [layout.message_id(shard, ref, i) for i in range(len(messages))]

    async def _write_timer(self, shard: int, bucket: int, messages: list[Message]) -> list[str]:
        # Registered before the write, so a consumer looks for the bucket's segments
        # from the moment one can exist.
        if (shard, bucket) not in self._registered:
            if not await self.committers[shard].submit(RegisterTimer(bucket)):
                return await self._write_late(shard, messages)
            self._registered.add((shard, bucket))
        try:
            seq, segment = await self._create(shard, bucket, messages)
        except BucketSealed:
            return await self._write_late(shard, messages)
        finally:
            self.blobs.forget(messages)
        ref = SegmentRef.timer(bucket, seq)
        self.segments.put(shard, ref, segment)
        self._forget_past_buckets()
        self.wake.ring(high=any(m.priority > 0 for m in messages))
        return [layout.message_id(shard, ref, i) for i in range(len(messages))]

    async def _write_late(self, shard: int, messages: list[Message]) -> list[str]:
        """Consumers sealed the bucket: by their clock its messages are long due (this
        machine's clock is far behind the store's). Into the log they go, keeping
        their visible_at: never into a bucket nobody reads."""
        log.warning(
            "a timer bucket was already sealed (this machine's clock is behind the store's): "
            "writing %d delayed messages to the log",
            len(messages),
        )
        return await self._write_all([(shard, lane, part) for lane, part in lanes(messages)])

    def _forget_past_buckets(self) -> None:
        """Drop what this producer remembers of timer buckets long sealed: nobody can
        write to them any more, and a long-lived producer would otherwise keep an
        entry per bucket (one a minute) forever."""
        horizon = self.clock() - TIMER_BUCKET - TIMER_SEAL_MARGIN
        for memory in (self._next_seq, self._locks):
            for key in [k for k in memory if 0 <= k[1] < horizon]:
                del memory[key]
        self._registered = {k for k in self._registered if not 0 <= k[1] < horizon}

    # --- sequence allocation ----------------------------------------------------------------

    def _key(self, shard: int, bucket: int, seq: int) -> str:
        return SegmentRef(bucket, seq).key(self.settings.name, shard)

    async def _create(
        self, shard: int, bucket: int, messages: list[Message]
    ) -> tuple[int, Segment]:
        """Create the segment of ``messages`` at the first free sequence number;
        return the number and the segment written."""
        # This process's writes to one log go one at a time: concurrent ones would
        # race each other for the same number, and every lost race costs a LIST.
        # A number is never reserved ahead of its write, because a write that then
        # failed would leave a gap that hides every later segment from consumers.
        if sources.monotonic() - self._exists_at > EXISTS_CHECK_INTERVAL:
            await ensure_exists(self.storage, self.settings.name)
            self._exists_at = sources.monotonic()
        lock = self._locks.setdefault((shard, bucket), asyncio.Lock())
        async with lock:
            return await self._create_next(shard, bucket, messages)

    def forget_sequences(self) -> None:
        """Forget the next free segment numbers remembered: a purge deleted the
        segments they follow, so a remembered number may be free below the cursor."""
        self._next_seq.clear()

    async def _trusted(
        self, shard: int, bucket: int, seq: int, known_at: float
    ) -> tuple[int, float]:
        """``seq``, the end of a log lane as known at ``known_at`` (monotonic), or
        when that is too long ago the end as it is now, from the cursor on: since
        then the sweeper may have deleted segments at that number (never one younger
        than SEGMENT_MIN_AGE), and a segment written behind the cursor is never read."""
        if bucket >= 0 or sources.monotonic() - known_at <= SEGMENT_MIN_AGE / 2:
            return seq, known_at
        now = sources.monotonic()
        start = max(seq, await self._first_candidate(shard, bucket))
        return await self._find_end(shard, bucket, start), now

    async def _create_next(
        self, shard: int, bucket: int, messages: list[Message]
    ) -> tuple[int, Segment]:
        remembered = self._next_seq.get((shard, bucket))
        if remembered is None:
            known_at = sources.monotonic()
            seq = await self._find_end(shard, bucket, await self._first_candidate(shard, bucket))
        else:
            seq, known_at = remembered
        segment, data = self._encode(messages)
        while True:
            # Just before each attempt (after the lock's wait, after lost races): a
            # payload blob written too long ago is written again (see PayloadBlobs),
            # and a lane's end known too long ago is looked up again.
            refreshed = await self.blobs.refresh(segment.messages)
            if refreshed is not None:
                segment, data = self._encode(refreshed)
            seq, known_at = await self._trusted(shard, bucket, seq, known_at)
            started = sources.monotonic()
            try:
                await self.storage.put(self._key(shard, bucket, seq), data, mode="create")
            except PreconditionFailed:
                # Another producer took this number (or consumers sealed the bucket
                # there): list from it on, past everything written since.
                known_at = sources.monotonic()
                seq = await self._find_end(shard, bucket, seq)
                continue
            self._next_seq[(shard, bucket)] = (seq + 1, started)
            return seq, segment

    async def _first_candidate(self, shard: int, bucket: int) -> int:
        if bucket >= 0:
            return 0
        key = layout.cursor_key(self.settings.name, shard)
        stored = await self.storage.get(key)
        if stored is None:
            # A new shard, or a deleted queue: never write segments nobody reads.
            await ensure_exists(self.storage, self.settings.name)
            self._exists_at = sources.monotonic()
            return 0
        cursor = decode_cursor(stored.data, key)
        return cursor.next_high if bucket == HIGH_LANE else cursor.next_seq

    async def _find_end(self, shard: int, bucket: int, seq: int) -> int:
        """The first sequence number >= ``seq`` after the last existing segment.

        Raises BucketSealed when the last object of a timer bucket is its seal."""
        name = self.settings.name
        start_after = self._key(shard, bucket, seq - 1) if seq > 0 else None
        entries = await self.storage.list(
            layout.lane_prefix(name, shard, bucket), start_after=start_after
        )
        end = seq
        for entry in entries:
            found = layout.parse_segment_key(name, shard, entry.key)
            if found is None:
                continue
            if bucket >= 0 and entry.size == 0 and await self._is_seal(entry.key):
                raise BucketSealed(f"timer bucket {bucket} of shard {shard} is sealed")
            end = max(end, found.seq + 1)
        return end

    async def _is_seal(self, key: str) -> bool:
        # A listing's size is a hint (a foreign file may look empty): read it.
        stored = await self.storage.get(key)
        return stored is not None and not stored.data


class BucketSealed(Exception):
    """Internal: a timer bucket's consumers closed it; its messages belong in the log."""
