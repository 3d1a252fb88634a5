"""Group commit: every claim, ack, failure and extension of one process for one
shard shares a compare-and-swap write of that shard's cursor.

Operations queue up while a write is in flight and go out together in the next
one, so a busy process sends one cursor PUT per batch, not per message. Invariant:
an operation's result is reported only after the cursor holding it is durable, and
a write whose outcome was unknown is settled by looking for its commit token in the
cursor, never by guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from s3queue import layout
from s3queue.cursor import (
    Ack,
    Claim,
    Cursor,
    Extend,
    Fail,
    Finalize,
    Ingest,
    Operation,
    Progress,
    Recovered,
    Release,
    Result,
    Rules,
    SealTimer,
    apply,
    count_candidates,
    decode_cursor,
    encode_cursor,
)
from s3queue.errors import AmbiguousWrite, PreconditionFailed, QueueError, StorageUnavailable
from s3queue.layout import SegmentRef
from s3queue.records import QueueSettings
from s3queue.segment import Segment, decode_segment
from s3queue.storage import Storage

log = logging.getLogger("s3queue.commit")

#: Claims look this many messages past their demand, so that priorities are honoured
#: among the next messages of a shard and not only among those already claimed.
LOOKAHEAD = 256
#: Log segments fetched in parallel once one new segment is found.
PROBE_FANOUT = 4
#: A finished message whose side records nobody finalized within this many seconds
#: (its worker died between commit and write) is finalized by whoever sees it.
FINALIZE_GRACE = 30.0
#: Timer buckets: delays longer than TIMER_THRESHOLD go into buckets this wide, sealed
#: TIMER_SEAL_MARGIN after they end (the tolerance for producers' clock skew).
TIMER_BUCKET = 60
TIMER_THRESHOLD = 120.0
TIMER_SEAL_MARGIN = 300.0
MAX_CONFLICTS = 64
#: After the log of a shard was found to hold nothing new, claims do not look again
#: for this long (seconds). Idle workers poll more slowly than this anyway.
EMPTY_LOG_COOLDOWN = 0.1

Clock = Callable[[], float]


class SegmentCache:
    """Segments are immutable, so a process can keep every one it has read."""

    def __init__(self, storage: Storage, queue: str, capacity: int = 4096) -> None:
        self._storage = storage
        self._queue = queue
        self._capacity = capacity
        self._items: OrderedDict[tuple[int, str], Segment] = OrderedDict()

    def get(self, shard: int, ref: SegmentRef) -> Segment | None:
        item = self._items.get((shard, str(ref)))
        if item is not None:
            self._items.move_to_end((shard, str(ref)))
        return item

    def put(self, shard: int, ref: SegmentRef, segment: Segment) -> None:
        self._items[(shard, str(ref))] = segment
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    async def fetch(self, shard: int, ref: SegmentRef) -> Segment | None:
        """The segment, from cache or storage; None if it does not exist (yet)."""
        cached = self.get(shard, ref)
        if cached is not None:
            return cached
        key = ref.key(self._queue, shard)
        stored = await self._storage.get(key)
        if stored is None or not stored.data:
            # Nothing there yet, or the empty object that seals a timer bucket.
            return None
        segment = decode_segment(stored.data, key)
        self.put(shard, ref, segment)
        return segment

    async def require(self, shard: int, refs: list[SegmentRef]) -> dict[str, Segment]:
        missing = [ref for ref in refs if self.get(shard, ref) is None]
        fetched = await asyncio.gather(*(self.fetch(shard, ref) for ref in missing))
        for ref, segment in zip(missing, fetched, strict=True):
            if segment is None:
                raise QueueError(
                    f"segment {ref} of shard {shard} of queue {self._queue!r} is missing "
                    "although the cursor still needs it",
                    retriable=False,
                    suggestion="segments must not be deleted by hand or by a lifecycle rule "
                    "shorter than the longest time a message may wait",
                )
        out: dict[str, Segment] = {}
        for ref in refs:
            segment = self.get(shard, ref)
            assert segment is not None
            out[str(ref)] = segment
        return out


@dataclass
class CommitContext:
    """What every shard's committer of one queue shares."""

    storage: Storage
    settings: QueueSettings
    segments: SegmentCache
    clock: Clock
    rules: Rules
    #: Writes dead letters, results and dedup updates of finished messages.
    finish: Callable[[int, Cursor, list[str]], Awaitable[None]]
    on_recovered: list[Callable[[Recovered], None]] = field(default_factory=list)


@dataclass
class _Pending:
    op: Operation
    future: asyncio.Future[Result]
    #: time.monotonic() by which this operation must be on its way to storage.
    deadline: float


class ShardCommitter:
    """Owns the cached cursor of one shard in this process and its commit loop."""

    def __init__(self, context: CommitContext, shard: int) -> None:
        self.context = context
        self.shard = shard
        self.key = layout.cursor_key(context.settings.name, shard)
        self._cursor: Cursor | None = None
        self._etag: str | None = None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._finalizing: set[str] = set()
        self._empty_polls = 0
        self._log_miss: tuple[int, float] = (-1, 0.0)
        self.commits = 0
        self.conflicts = 0

    # --- public --------------------------------------------------------------------

    async def submit(self, op: Operation, *, linger: float = 0.0) -> Result:
        """Commit ``op`` and return its result once the cursor holding it is durable.

        With ``linger`` > 0 the operation may wait that many seconds for others to
        share its write: a worker's acks ride on its next claim instead of costing a
        PUT of their own. Operations without linger go out in the next write.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"s3queue-commit-{self.shard}")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(op, future, time.monotonic() + max(0.0, linger)))
        self._wake.set()
        return await future

    async def read(self) -> Cursor:
        """A fresh copy of the cursor from storage (the commit loop's cache is left
        alone: it is only ever replaced together with the ETag it was read with)."""
        stored = await self.context.storage.get(self.key)
        return Cursor(shard=self.shard) if stored is None else decode_cursor(stored.data, self.key)

    def log_grew(self) -> None:
        """This process wrote a segment to the shard: look at the log on the next claim."""
        self._log_miss = (-1, 0.0)
        self._empty_polls = 0

    @property
    def cached(self) -> Cursor | None:
        return self._cursor

    async def close(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._task is not None:
            if self._pending:
                # Let the loop commit what callers are still waiting for.
                await asyncio.gather(*(p.future for p in self._pending), return_exceptions=True)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            due = min(p.deadline for p in self._pending) - time.monotonic()
            if due > 0:
                # Everything pending may linger: wait for an urgent operation (the
                # wake-up) or for the first deadline, whichever comes first.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
                self._wake.set()
                continue
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                results = await self._commit([p.op for p in batch])
            except Exception as error:  # every waiter learns why its op did not land
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def _refresh(self) -> None:
        stored = await self.context.storage.get(self.key)
        if stored is None:
            self._cursor, self._etag = Cursor(shard=self.shard), None
        else:
            self._cursor, self._etag = decode_cursor(stored.data, self.key), stored.etag

    async def _commit(self, ops: list[Operation]) -> list[Result]:
        conflicts = 0
        while True:
            # An idle poll alternates between looking for new segments and re-reading
            # the cursor (to see leases that other processes let expire): one request
            # per poll either way.
            idle_refresh = self._empty_polls % 2 == 1 and all(isinstance(op, Claim) for op in ops)
            if self._cursor is None or idle_refresh:
                await self._refresh()
            cursor, etag = self._cursor, self._etag
            assert cursor is not None
            now = self.context.clock()
            prepared = await self._prepare(cursor, ops, now, probe=not idle_refresh)
            segments = await self.context.segments.require(
                self.shard, self._needed_segments(cursor, prepared + ops)
            )
            commit = secrets.token_hex(8)
            transition = apply(
                cursor,
                prepared + ops,
                segments,
                now=now,
                commit=commit,
                new_token=lambda: secrets.token_hex(8),
                rules=self.context.rules,
            )
            results = transition.results[len(prepared) :]
            self._note_poll(ops, results)
            if not _changed(cursor, transition.cursor):
                return results
            data = encode_cursor(transition.cursor)
            try:
                if etag is None:
                    new_etag = await self.context.storage.put(self.key, data, if_none_match=True)
                else:
                    new_etag = await self.context.storage.put(self.key, data, if_match=etag)
            except AmbiguousWrite:
                await self._refresh()
                assert self._cursor is not None
                if commit not in self._cursor.recent_commits:
                    conflicts = await self._conflict(conflicts)
                    continue
                # Our write landed and others committed on top: results stand.
            except PreconditionFailed:
                await self._refresh()
                if all(isinstance(op, Claim) for op in ops):
                    # Claims can go elsewhere: yield this shard to the process that
                    # is writing it (its acks cannot move) and let the caller try
                    # another shard. Nothing was claimed.
                    self.conflicts += 1
                    return [[] for _ in ops]
                conflicts = await self._conflict(conflicts)
                continue
            else:
                self._cursor, self._etag = transition.cursor, new_etag
            self.commits += 1
            self._after_commit(transition.cursor, transition.finishing, transition.recovered)
            return results

    async def _conflict(self, conflicts: int) -> int:
        self.conflicts += 1
        conflicts += 1
        if conflicts >= MAX_CONFLICTS:
            raise StorageUnavailable(
                f"gave up on the cursor of shard {self.shard} after {conflicts} conflicting writes",
                suggestion="too many processes write this shard at once; add shards",
            )
        if conflicts > 2:
            # Others are writing this cursor right now: back off so one of us wins.
            await asyncio.sleep(random.uniform(0, 0.005 * 2 ** min(conflicts, 6)))
        return conflicts

    def _note_poll(self, ops: list[Operation], results: list[Result]) -> None:
        claims = [r for op, r in zip(ops, results, strict=True) if isinstance(op, Claim)]
        if claims:
            found = any(isinstance(r, list) and r for r in claims)
            self._empty_polls = 0 if found else self._empty_polls + 1

    def _needed_segments(self, cursor: Cursor, ops: list[Operation]) -> list[SegmentRef]:
        refs = {SegmentRef.parse(s.ref) for s in cursor.open}
        refs.update(op.ref for op in ops if isinstance(op, Ingest))
        for mid in cursor.flights:
            refs.add(layout.parse_message_id(mid).segment)
        for op in ops:
            if isinstance(op, Ack | Fail | Extend | Release | Progress):
                refs.add(layout.parse_message_id(op.id).segment)
        return sorted(refs)

    # --- what a batch needs before it is applied -----------------------------------------

    async def _prepare(
        self, cursor: Cursor, ops: list[Operation], now: float, *, probe: bool
    ) -> list[Operation]:
        prepared: list[Operation] = []
        orphans = [
            mid
            for mid, flight in cursor.flights.items()
            if flight.outcome is not None
            and flight.outcome.finished_at + FINALIZE_GRACE < now
            and mid not in self._finalizing
        ]
        if orphans:
            await self.context.finish(self.shard, cursor, orphans)
            prepared.append(Finalize(tuple(orphans)))
        demand = sum(op.max_messages for op in ops if isinstance(op, Claim))
        if demand <= 0:
            return prepared
        open_refs = [SegmentRef.parse(s.ref) for s in cursor.open]
        segments = await self.context.segments.require(self.shard, open_refs)
        available = count_candidates(cursor, segments, now, demand + LOOKAHEAD)
        full = len(cursor.open) >= self.context.rules.max_open_segments
        if full or available >= demand + LOOKAHEAD:
            return prepared
        # Due timer buckets are known from the cursor: reading them costs a request
        # only when one is due, so it does not wait for the idle alternation.
        prepared.extend(await self._probe_timers(cursor, now))
        missed_recently = (
            self._log_miss[0] == cursor.next_seq
            and time.monotonic() - self._log_miss[1] < EMPTY_LOG_COOLDOWN
        )
        # After the log had nothing new a moment ago, do not pay a request per claim
        # to look again while other shards keep a busy worker fed.
        if probe and not missed_recently:
            prepared.extend(await self._probe_log(cursor, demand + LOOKAHEAD - available))
        return prepared

    async def _probe_log(self, cursor: Cursor, wanted: int) -> list[Operation]:
        found: list[Operation] = []
        seq = cursor.next_seq
        fanout = 1
        room = self.context.rules.max_open_segments - len(cursor.open)
        while wanted > 0 and len(found) < room:
            refs = [SegmentRef.log(seq + i) for i in range(fanout)]
            fetched = await asyncio.gather(
                *(self.context.segments.fetch(self.shard, ref) for ref in refs)
            )
            for ref, segment in zip(refs, fetched, strict=True):
                if segment is None:
                    self._log_miss = (ref.seq, time.monotonic())
                    return found
                found.append(Ingest(ref, len(segment.messages)))
                wanted -= len(segment.messages)
            seq += fanout
            fanout = PROBE_FANOUT
        return found

    async def _probe_timers(self, cursor: Cursor, now: float) -> list[Operation]:
        found: list[Operation] = []
        for bucket_text, next_seq in sorted(cursor.timers.items(), key=lambda kv: int(kv[0])):
            bucket = int(bucket_text)
            if bucket > now:
                break
            seq = next_seq
            while True:
                ref = SegmentRef.timer(bucket, seq)
                segment = await self.context.segments.fetch(self.shard, ref)
                if segment is None:
                    break
                found.append(Ingest(ref, len(segment.messages)))
                seq += 1
            expired = seq == next_seq and bucket + TIMER_BUCKET + TIMER_SEAL_MARGIN < now
            if expired and await self._seal(bucket, seq):
                found.append(SealTimer(bucket))
        return found

    async def _seal(self, bucket: int, seq: int) -> bool:
        """Close a timer bucket for good: an empty object at its next sequence number.

        A producer whose clock is far behind may still try to write into the bucket;
        every write goes through the next free number, so it meets this object, sees
        the bucket sealed, and writes its (long due) messages to the log instead.
        False when a producer took the number first: its segment is read next time.
        """
        storage = self.context.storage
        key = layout.timer_key(self.context.settings.name, self.shard, bucket, seq)
        try:
            await storage.put(key, b"", if_none_match=True)
        except PreconditionFailed:
            # Sealed already (by us before a lost cursor write, or by another
            # process), or a producer's segment got there first.
            stored = await storage.get(key)
            return stored is not None and not stored.data
        return True

    # --- after a commit ---------------------------------------------------------------------

    def _after_commit(
        self, cursor: Cursor, finishing: list[str], recovered: list[Recovered]
    ) -> None:
        for event in recovered:
            for listener in self.context.on_recovered:
                try:
                    listener(event)
                except Exception:  # a listener's bug must not break the commit loop
                    log.exception("on_recovered listener failed")
        if finishing:
            self._finalizing.update(finishing)
            task = asyncio.create_task(self._finalize(cursor, finishing))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _finalize(self, cursor: Cursor, ids: list[str]) -> None:
        try:
            await self.context.finish(self.shard, cursor, ids)
            await self.submit(Finalize(tuple(ids)))
        except QueueError:
            # Left in the cursor with its outcome: whoever commits after
            # FINALIZE_GRACE writes the records again (they are idempotent).
            log.warning("could not finalize %d finished messages yet", len(ids), exc_info=True)
        finally:
            self._finalizing.difference_update(ids)


def _changed(before: Cursor, after: Cursor) -> bool:
    same_header = msgspec.structs.replace(
        after,
        version=before.version,
        commit=before.commit,
        recent_commits=before.recent_commits,
    )
    return same_header != before
