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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import msgspec
from msgspec import UnsetType

from s3queue import sources
from s3queue.core import layout, quarantine
from s3queue.core.catalog import ensure_exists
from s3queue.core.clock import Clock, StoreClock
from s3queue.core.cursor import (
    YIELDED,
    Cancel,
    Claim,
    Cursor,
    Finalize,
    Ingest,
    Op,
    Operation,
    Quarantine,
    Recovered,
    Result,
    Rules,
    SealTimer,
    Transition,
    apply,
    best_waiting,
    buckets_of,
    count_candidates,
    decode_cursor,
    encode_cursor,
    is_ahead,
    is_unread,
    next_due,
    oldest_lease,
    oldest_waiting,
    rate_due,
)
from s3queue.core.layout import HIGH_LANE, TIMER_BUCKET, TIMER_SEAL_MARGIN, SegmentRef
from s3queue.core.outcomes import OutcomeRecords
from s3queue.core.rates import QUEUE_WIDE, Bucket, ShardRate, Tokens, held_keys
from s3queue.core.records import QueueSettings
from s3queue.core.segment import Segment, SegmentCache
from s3queue.errors import (
    AmbiguousWrite,
    CorruptData,
    PreconditionFailed,
    QueueError,
    StorageUnavailable,
)
from s3queue.storage import Storage, UpdateVersion

log = logging.getLogger("s3queue.commit")

#: Claims look this many messages past their demand, so that priorities are honoured
#: among the next messages of a shard and not only among those already claimed.
LOOKAHEAD = 256
#: Log segments fetched in parallel once one new segment is found.
PROBE_FANOUT = 4
MAX_CONFLICTS = 64
#: After the log of a shard was found to hold nothing new, claims do not look again
#: for this long (seconds), and a due timer bucket found empty is not read again
#: for this long either. Idle workers poll more slowly than this anyway.
EMPTY_LOG_COOLDOWN = 0.1
#: A claim that finds nothing re-reads the cursor when this process has neither read
#: nor written it for this long (seconds): others' releases, retries and timer
#: registrations change the cursor without this process knowing.
CURSOR_MAX_AGE = 5.0
#: With a limit on the whole queue, claims come as often as tokens, and every
#: message waits for one anyway: a log found empty is not looked at again for this
#: long (a wake-up still makes the next claim look at once).
RATE_EMPTY_LOG_COOLDOWN = 1.0


@dataclass
class CommitContext:
    """What every shard's committer of one queue shares."""

    storage: Storage
    settings: QueueSettings
    segments: SegmentCache
    clock: Clock
    rules: Rules
    #: Writes dead letters, results and dedup updates of finished messages.
    outcomes: OutcomeRecords
    on_recovered: list[Callable[[Recovered], None]] = field(default_factory=list)
    #: This process's rate limits as each shard's share (``Queue.set_rate_limit``).
    rates: tuple[ShardRate, ...] = ()


R = TypeVar("R")


@dataclass
class _Pending:
    op: Operation
    #: Of the result type of ``op``'s class (see cursor.Op), set from the batch's
    #: results, whose list cannot say which element has which type.
    future: asyncio.Future[Any]
    #: sources.monotonic() by which this operation must be on its way to storage.
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
        #: Segments found unreadable and recorded under quarantine/, to leave the
        #: window with the next commit.
        self._aside: set[SegmentRef] = set()
        #: (lane, next seq) -> sources.monotonic() when that segment was found missing.
        self._misses: dict[tuple[int, int], float] = {}
        #: sources.monotonic() when the cached cursor was last known to be current.
        self._current_at = 0.0
        #: What the last look before a claim found, not written (see _commit).
        self._view: Cursor | None = None
        #: sources.monotonic() when writing an orphan's records last failed.
        self._orphan_tried: dict[str, float] = {}
        #: The express lane may hold segments this process has not looked for;
        #: generations tell a request to look made during a probe from an old one.
        self.high_pending = True
        self._high_generation = 0
        self._high_probed = -1
        #: The rate-limit buckets this process wrote last, and the store time when
        #: the cached cursor was last current (see rates.held_keys).
        self._mine: dict[str, Bucket] = {}
        self._seen_at = -math.inf
        self.commits = 0
        self.conflicts = 0
        #: When (store time, whole seconds) the cursor this process last read was
        #: written, by whoever wrote it; None before a read or if the store cannot say.
        self.written_at: float | None = None

    # --- public --------------------------------------------------------------------

    async def submit(self, op: Op[R], *, linger: float = 0.0) -> R:
        """Commit ``op`` and return its result once the cursor holding it is durable.

        With ``linger`` > 0 the operation may wait that many seconds for others to
        share its write: a worker's acks ride on its next claim instead of costing a
        PUT of their own. Operations without linger go out in the next write.
        """
        return await self._enqueue(op, linger)

    async def submit_all(self, ops: Sequence[Op[R]]) -> list[R]:
        """Commit ``ops`` together, in one write (unless it must be retried), and
        return their results in order."""
        futures = [self._enqueue(op, 0.0) for op in ops]
        return list(await asyncio.gather(*futures))

    def _enqueue(self, op: Op[R], linger: float) -> asyncio.Future[R]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"s3queue-commit-{self.shard}")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # Every Op is one of the Operation union: mypy cannot list a class's subclasses
        # (tests/test_cursor.py checks that the two agree).
        pending = _Pending(cast(Operation, op), future, sources.monotonic() + max(0.0, linger))
        self._pending.append(pending)
        self._wake.set()
        return future

    async def read(self) -> Cursor:
        """A fresh copy of the cursor from storage (the commit loop's cache is left
        alone: it is only ever replaced together with the ETag it was read with)."""
        stored = await self.context.storage.get(self.key)
        return Cursor(shard=self.shard) if stored is None else decode_cursor(stored.data, self.key)

    def forget_misses(self) -> None:
        """Someone announced new work (segments, or a release or retry in the
        cursor): the next claim that finds nothing re-reads the cursor, and looks at
        the logs however recently it found them empty."""
        self._misses.clear()
        self._current_at = -math.inf

    def log_grew(self, lane: int) -> None:
        """This process wrote a segment to a log lane of the shard: look at that lane
        on the next claim, although it was found empty a moment ago."""
        self._misses = {k: v for k, v in self._misses.items() if k[0] != lane}
        if lane == HIGH_LANE:
            self.expect_high()

    @property
    def cached(self) -> Cursor | None:
        return self._cursor

    async def lane_has_more(self, *, high: bool = False) -> bool:
        """Whether the log (or the express lane) holds a segment the cached cursor has
        not taken in: one GET, or none when it was read already."""
        cursor = self._cursor or await self.refresh()
        seq = cursor.next_high if high else cursor.next_seq
        ref = SegmentRef.high(seq) if high else SegmentRef.log(seq)
        try:
            found = await self.context.segments.fetch(self.shard, ref) is not None
        except CorruptData:
            found = True  # a claim sets it aside
        if found and high:
            self.expect_high()
        return found

    async def refresh(self) -> Cursor:
        """Re-read the cursor into the cache (what others committed becomes known)."""
        await self._refresh()
        assert self._cursor is not None
        return self._cursor

    def _window(self) -> dict[str, Segment] | None:
        """The open segments of the cursor as this process knows it (the last look's
        view, else the cached cursor) that are in the cache; None if any is not."""
        segments = self._cached_window()
        cursor = self._known
        if cursor is None or len(segments) < len(cursor.open):
            return None
        return segments

    def _cached_window(self) -> dict[str, Segment]:
        cursor, out = self._known, {}
        for open_segment in cursor.open if cursor is not None else []:
            segment = self.context.segments.get(self.shard, SegmentRef.parse(open_segment.ref))
            if segment is not None:
                out[open_segment.ref] = segment
        return out

    async def load_window(self) -> None:
        """Read the window's segments this process has not cached (a cursor re-read
        by a sweep holds segments other processes took in)."""
        if self._cursor is not None:
            refs = [SegmentRef.parse(s.ref) for s in self._cursor.open]
            await self.context.segments.require(self.shard, list(set(refs) - self._aside))

    def best_waiting(self, now: float) -> int | None:
        """The best priority claimable now as far as the cached cursor knows (no I/O);
        None when it knows of nothing, or has no cursor yet."""
        segments = self._window()
        if segments is None or self._known is None:
            return None
        rates, hold = self.context.rates, self.held()
        return best_waiting(self._known, segments, now, rates, hold=hold)

    def waiting_since(self, now: float) -> float | None:
        """When the longest-waiting message claimable now was enqueued, as far as
        the cached cursor knows (no I/O); None when it knows of none."""
        segments = self._window()
        if segments is None or self._known is None:
            return None
        return oldest_waiting(self._known, segments, now)

    def held_since(self, now: float) -> float | None:
        """When the longest-held running lease of the cached cursor was claimed."""
        return None if self._known is None else oldest_lease(self._known, now)

    # --- rate limits -------------------------------------------------------------------

    def held(self) -> tuple[str, ...]:
        """The rate-limit buckets of this shard whose tokens another process was
        spending and keeping up with when the cached cursor was read: claims here
        leave them alone (no I/O; see rates.held_keys)."""
        cursor = self._known
        if cursor is None or not self.context.rates:
            return ()
        return held_keys(buckets_of(cursor), self.context.rates, self._mine, self._seen_at)

    def starved(self, now: float) -> bool:
        """Whether a claim here could take nothing now for want of tokens of the
        queue's own limit, as far as the cached cursor knows (no I/O). Not when
        they are left to another process and the copy is old: a claim that takes
        nothing from an old copy reads it again, and so learns whether that process
        still spends them."""
        cursor = self._known
        if cursor is None or not any(r.key == QUEUE_WIDE for r in self.context.rates):
            return False
        hold = self.held()
        if QUEUE_WIDE in hold and sources.monotonic() - self._current_at > CURSOR_MAX_AGE:
            return False
        tokens = Tokens(buckets_of(cursor), self.context.rates, now, hold=hold, shard=self.shard)
        return tokens.exhausted

    def rate_due(self, now: float) -> float | None:
        """When work that waits here for rate-limit tokens gets them (see
        :func:`cursor.rate_due`); None if none waits (no I/O). Tokens another
        process is spending are not waited for."""
        cursor = self._known
        if cursor is None or not self.context.rates:
            return None
        hold = set(self.held())
        rates = [r for r in self.context.rates if r.key not in hold]
        return rate_due(cursor, self._cached_window(), now, rates) if rates else None

    def next_due(self, now: float, after: float = -math.inf) -> float | None:
        """When the cursor as this process knows it next has work (see
        :func:`cursor.next_due`); no I/O. Records this process is writing now are
        not due: their commit follows."""
        cursor = self._known
        if cursor is None:
            return None
        if self._finalizing:
            flights = {m: f for m, f in cursor.flights.items() if m not in self._finalizing}
            cursor = msgspec.structs.replace(cursor, flights=flights)
        due = next_due(cursor, self._cached_window(), now, self.context.rules, after=after)
        token = self.rate_due(now)
        if token is not None and token > after:
            due = max(token, now) if due is None else min(due, max(token, now))
        return due

    @property
    def _known(self) -> Cursor | None:
        return self._view or self._cursor

    async def settle(self) -> None:
        """Wait until the records of the messages finished so far (dead letters,
        results, dedup markers) are written and finalized: they go out after the
        commit that finished the messages, in the background."""
        while self._background:
            await asyncio.gather(*list(self._background))

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
            due = min(p.deadline for p in self._pending) - sources.monotonic()
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
            if self._etag is not None:
                # The cursor this process knew is gone: the queue was deleted (or the
                # cursor by hand). Never go on as if the shard were new.
                await ensure_exists(self.context.storage, self.context.settings.name)
            self._cursor, self._etag = Cursor(shard=self.shard), None
        else:
            self._cursor, self._etag = decode_cursor(stored.data, self.key), stored.etag
            self.written_at = stored.modified
        self._current_at = sources.monotonic()
        self._seen_at = self.context.clock()
        self._view = None

    async def _commit(self, ops: list[Operation]) -> list[Result]:
        # Time decides leases and delays: judged on the store's clock, measured (a
        # process that opened the queue read-only has not yet).
        store_clock = self.context.clock
        if isinstance(store_clock, StoreClock):
            name = self.context.settings.name
            await store_clock.sync(self.context.storage, layout.clock_key(name))
        conflicts = set_aside = 0
        while True:
            if self._cursor is None:
                await self._refresh()
            cursor, etag = self._cursor, self._etag
            assert cursor is not None
            step = await self._next_state(cursor, ops)
            if step is None:
                # A segment was set aside: start again without it (each one once).
                set_aside += 1
                if set_aside > MAX_CONFLICTS:
                    raise CorruptData(
                        f"shard {self.shard} found {set_aside} unreadable segments in one commit",
                        suggestion=f"run: s3queue doctor {self.context.settings.name}",
                    )
                continue
            prepared, transition = step
            results = transition.results[len(prepared) :]
            # A look writes nothing, unless it must: records it wrote (a seal, side
            # records, a quarantine) need the cursor to say so.
            look = _is_look(ops) and not any(
                isinstance(op, Quarantine | Finalize | SealTimer) for op in prepared
            )
            if look or not _changed(cursor, transition.cursor):
                if self._stale_and_idle(ops, results):
                    # Nothing to claim here as far as this copy knows, and it is old:
                    # others may have released or retried messages since.
                    await self._refresh()
                    continue
                self._unwritten(cursor, prepared, transition if look else None)
                return results
            outcome = await self._write(transition, etag, ops)
            if outcome == "yield":
                # Claims can go elsewhere: yield this shard to the process that is
                # writing it (its acks cannot move); the caller tries another shard.
                self.conflicts += 1
                return [YIELDED for _ in ops]
            if outcome == "retry":
                conflicts = await self._conflict(conflicts)
                continue
            self.commits += 1
            self._spent(cursor, transition.cursor)
            self._settled(transition.cursor)
            self._after_commit(transition.cursor, transition.finishing, transition.recovered)
            return results

    async def _next_state(
        self, cursor: Cursor, ops: list[Operation]
    ) -> tuple[list[Operation], Transition] | None:
        """What ``ops`` make of ``cursor`` (and the operations prepared before them);
        None after an unreadable segment was set aside."""
        now = self.context.clock()
        try:
            prepared = await self._prepare(cursor, ops, now)
            segments = await self.context.segments.require(
                self.shard, self._needed_segments(cursor, prepared + ops)
            )
            segments.update(await self._segments_cancelled_ahead(cursor, ops))
        except CorruptData as error:
            if "ref" not in error.metadata:
                raise
            if not await self._purged_since(error):
                await self._set_aside(error, self._cursor or cursor)
            return None
        # Decided as of after the reads that prepared it (segments, timers): leases and
        # rate-limit tokens then date from just before the write, not from before
        # reads that may have taken a while. What was prepared holds later too.
        now = max(now, self.context.clock())
        transition = apply(
            cursor,
            prepared + ops,
            segments,
            now=now,
            commit=sources.token_hex(8),
            new_token=lambda: sources.token_hex(8),
            rules=self.context.rules,
        )
        return prepared, transition

    def _unwritten(
        self, cursor: Cursor, prepared: list[Operation], look: Transition | None
    ) -> None:
        """A batch that is not written: one that changed nothing, or a look before
        claiming. A look writes nothing: what it found (segments to take in, leases
        to recover) is what the next claim finds again, from the segment cache, and
        writes with its claim; meanwhile it is the view claims are ordered by."""
        if look is None:
            self._settled(cursor)
            return
        self._view = look.cursor
        if not any(isinstance(op, Ingest) and op.ref.is_high for op in prepared):
            self._settled(cursor)  # the express lane is known: nothing new there

    async def _write(self, transition: Transition, etag: str | None, ops: list[Operation]) -> str:
        """CAS-write the new cursor: "done", "yield" (a conflict on a batch of claims
        only) or "retry" (re-read and apply the batch again)."""
        data = encode_cursor(transition.cursor)
        storage = self.context.storage
        try:
            if etag is None:
                # A first cursor: only for a queue that exists (not one just deleted).
                await ensure_exists(storage, self.context.settings.name)
                new_etag = await storage.put(self.key, data, mode="create")
            else:
                new_etag = await storage.put(self.key, data, mode=UpdateVersion(etag))
        except AmbiguousWrite:
            await self._refresh()
            assert self._cursor is not None
            if transition.cursor.commit not in self._cursor.recent_commits:
                return "retry"
            # Our write landed and others committed on top: results stand.
        except PreconditionFailed:
            await self._refresh()
            return "yield" if all(isinstance(op, Claim) for op in ops) else "retry"
        else:
            self._cursor, self._etag = transition.cursor, new_etag
            self._current_at = sources.monotonic()
        self._view = None
        return "done"

    def _spent(self, before: Cursor, after: Cursor) -> None:
        """Remember the buckets a commit of this process wrote (see :meth:`held`)."""
        if not isinstance(after.buckets, UnsetType):
            old = buckets_of(before)
            self._mine.update((k, b) for k, b in after.buckets.items() if old.get(k) != b)
        self._seen_at = self.context.clock()

    def _stale_and_idle(self, ops: list[Operation], results: list[Result]) -> bool:
        claims = [r for op, r in zip(ops, results, strict=True) if isinstance(op, Claim)]
        if not claims or len(claims) != len(ops) or any(r != [] for r in claims):
            return False
        return sources.monotonic() - self._current_at > CURSOR_MAX_AGE

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
            await asyncio.sleep(sources.uniform(0, 0.005 * 2 ** min(conflicts, 6)))
        return conflicts

    def _needed_segments(self, cursor: Cursor, ops: list[Operation]) -> list[SegmentRef]:
        # An operation on a lease needs its message's segment only if the message
        # is in flight, and then the flights below name it. Any other id (a lease of
        # another queue, a made-up one) is refused as stale without reading
        # anything: reading would take a segment not written yet for a missing one.
        refs = {SegmentRef.parse(s.ref) for s in cursor.open}
        refs.update(op.ref for op in ops if isinstance(op, Ingest))
        for mid in cursor.flights:
            refs.add(layout.parse_message_id(mid).segment)
        return sorted(refs - self._aside)

    async def _segments_cancelled_ahead(
        self, cursor: Cursor, ops: list[Operation]
    ) -> dict[str, Segment]:
        """The segments, not read yet, of messages being cancelled, when they exist: a
        cancel of such a message waits in the cursor for its segment, so it must be
        a message that exists (ids are not checked otherwise)."""
        refs = sorted(
            {
                ref
                for op in ops
                if isinstance(op, Cancel)
                and (ref := layout.parse_message_id(op.id).segment) not in self._aside
                and is_ahead(cursor, ref)
            }
        )
        found = await asyncio.gather(*(self.context.segments.fetch(self.shard, r) for r in refs))
        return {str(r): segment for r, segment in zip(refs, found, strict=True) if segment}

    async def _set_aside(self, error: CorruptData, cursor: Cursor) -> None:
        """Quarantine a segment that cannot be read, so the rest of the shard keeps
        working: a record under quarantine/, then the segment leaves the window (or
        is stepped over in its lane) in the next commit."""
        ref = SegmentRef.parse(str(error.metadata["ref"]))
        window = next((s for s in cursor.open if s.ref == str(ref)), None)
        await quarantine.record(
            self.context.storage,
            self.context.settings.name,
            self.shard,
            ref,
            error.message,
            self.context.clock(),
            quarantine.unfinished(self.shard, window),
        )
        self._aside.add(ref)

    async def _purged_since(self, error: CorruptData) -> bool:
        """A segment the cached cursor needs is missing: whether a purge (which
        deletes the segments it covers) left it behind since the cursor was read.
        Then the cursor is re-read, and nothing is set aside: nothing was lost."""
        if not error.metadata.get("missing"):
            return False
        ref = SegmentRef.parse(str(error.metadata["ref"]))
        await self._refresh()
        assert self._cursor is not None
        return ref not in self._needed_segments(self._cursor, [])

    async def set_aside(self, ref: SegmentRef, reason: str) -> None:
        """Quarantine a segment of the window now (``s3queue doctor --fix``)."""
        cursor = await self.refresh()
        error = CorruptData(reason, metadata={"ref": str(ref)})
        await self._set_aside(error, cursor)
        await self.submit(Claim("doctor", 0, 1.0))

    # --- what a batch needs before it is applied -----------------------------------------

    async def _prepare(self, cursor: Cursor, ops: list[Operation], now: float) -> list[Operation]:
        # Segments of the window set aside; those ahead of it are skipped in their
        # place by the probes below.
        window = {s.ref for s in cursor.open}
        prepared: list[Operation] = [
            Quarantine(ref) for ref in sorted(self._aside) if str(ref) in window
        ]
        prepared.extend(await self._finalize_orphans(cursor, now))
        claims = [op for op in ops if isinstance(op, Claim)]
        if not claims:
            return prepared
        room = self.context.rules.max_open_segments - len(cursor.open)
        # Due timer buckets are known from the cursor: reading them costs a request
        # only when one is due.
        found = await self._probe_timers(cursor, now, room)
        prepared.extend(found)
        room -= len(found)
        if self.high_pending:
            # The express lane is always read to its end: its messages go before
            # everything in the log, however deep the log's backlog is. It is known
            # only once a probe reached its end (a full window stops it short).
            generation = self._high_generation
            found, ended = await self._probe_lane(SegmentRef.high, cursor.next_high, math.inf, room)
            if ended:
                self._high_probed = generation
            prepared.extend(found)
            room -= len(found)
        demand = sum(op.max_messages for op in claims)
        # The window as it will be: without the segments set aside.
        readable = [s for s in cursor.open if SegmentRef.parse(s.ref) not in self._aside]
        view = msgspec.structs.replace(cursor, open=readable)
        open_refs = [SegmentRef.parse(s.ref) for s in readable]
        segments = await self.context.segments.require(self.shard, open_refs)
        # A look before claiming (demand 0, see Queue.claim) only needs to know
        # whether the shard holds anything: one log segment at most.
        enough = demand + LOOKAHEAD if demand > 0 else 1
        available = count_candidates(view, segments, now, enough, self.context.rates)
        if available < enough:
            wanted = enough - available
            found, _ = await self._probe_lane(SegmentRef.log, cursor.next_seq, wanted, room)
            prepared.extend(found)
        return prepared

    async def _finalize_orphans(self, cursor: Cursor, now: float) -> list[Operation]:
        """Write the records of messages that finished more than finalize_grace ago
        whose own process never did (it died in between), and finalize them. One
        whose records cannot be written now (an unreadable dedup marker, its
        segment set aside) is tried again a grace later, never in a loop."""
        grace = self.context.rules.finalize_grace
        orphans = [
            mid
            for mid, flight in cursor.flights.items()
            if flight.outcome is not None
            and flight.outcome.finished_at + grace < now
            and mid not in self._finalizing
            and self._orphan_tried.get(mid, -math.inf) + grace < sources.monotonic()
            and layout.parse_message_id(mid).segment not in self._aside
            # Cancelled before its segment was read: finalized once it is.
            and not is_ahead(cursor, layout.parse_message_id(mid).segment)
        ]
        done: list[str] = []
        for mid in orphans:
            try:
                await self.context.outcomes.write(self.shard, cursor, [mid])
                done.append(mid)
            except QueueError as error:
                self._orphan_tried[mid] = sources.monotonic()
                log.warning("could not write the records of %s yet: %s", mid, error)
        return [Finalize(tuple(done))] if done else []

    def expect_high(self) -> None:
        """Someone wrote to an express lane: read this shard's on its next claim,
        however recently it was found empty."""
        self._high_generation += 1
        self.high_pending = True
        self._misses = {k: v for k, v in self._misses.items() if k[0] != HIGH_LANE}

    def _settled(self, cursor: Cursor) -> None:
        """A commit (or a batch that changed nothing) went through: the express lane
        is known if its prepare read it to the end, and segments set aside that the
        cursor has left behind are forgotten."""
        if self._high_probed == self._high_generation:
            self.high_pending = False
        self._aside = {ref for ref in self._aside if _ahead_or_open(cursor, ref)}

    def _missed(self, lane: int, seq: int) -> bool:
        """Whether ``seq`` of ``lane`` was found missing a moment ago: after a log
        had nothing new, do not pay a request per claim to look again while other
        shards keep a busy worker fed."""
        at = self._misses.get((lane, seq))
        if at is None:
            return False
        queue_limited = any(r.key == QUEUE_WIDE for r in self.context.rates)
        cooldown = RATE_EMPTY_LOG_COOLDOWN if queue_limited else EMPTY_LOG_COOLDOWN
        return sources.monotonic() - at < cooldown

    async def _probe_lane(
        self, make: Callable[[int], SegmentRef], seq: int, wanted: float, room: int
    ) -> tuple[list[Operation], bool]:
        """Ingest ops for the segments of one log lane from ``seq`` on, until
        ``wanted`` messages, ``room`` segments or the lane's end; and whether the
        lane's end was reached."""
        found: list[Operation] = []
        lane = make(0).bucket
        if self._missed(lane, seq):
            return found, False
        fanout = 1
        while wanted > 0 and len(found) < room:
            refs = [make(seq + i) for i in range(min(fanout, room - len(found)))]
            fetched = await asyncio.gather(*(self._fetch(ref) for ref in refs))
            for ref, segment in zip(refs, fetched, strict=True):
                if ref in self._aside:
                    found.append(Quarantine(ref))  # set aside: stepped over
                    continue
                if segment is None:
                    self._misses[(lane, ref.seq)] = sources.monotonic()
                    return found, True
                found.append(Ingest(ref, len(segment.messages)))
                wanted -= len(segment.messages)
            seq += len(refs)
            fanout = PROBE_FANOUT
        return found, False

    async def _fetch(self, ref: SegmentRef) -> Segment | None:
        if ref in self._aside:
            return None
        return await self.context.segments.fetch(self.shard, ref)

    async def _probe_timers(self, cursor: Cursor, now: float, room: int) -> list[Operation]:
        found: list[Operation] = []
        for bucket, next_seq in sorted(cursor.timers.items()):
            if bucket > now or len(found) >= room:
                break
            sealable = bucket + TIMER_BUCKET + TIMER_SEAL_MARGIN < now
            if self._missed(bucket, next_seq) and not sealable:
                continue
            seq = next_seq
            while len(found) < room:
                ref = SegmentRef.timer(bucket, seq)
                segment = await self._fetch(ref)
                if ref in self._aside:
                    found.append(Quarantine(ref))
                    seq += 1
                    continue
                if segment is None:
                    self._misses[(bucket, seq)] = sources.monotonic()
                    break
                found.append(Ingest(ref, len(segment.messages)))
                seq += 1
            if sealable and seq == next_seq and await self._seal(bucket, seq):
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
            await storage.put(key, b"", mode="create")
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
            await self.context.outcomes.write(self.shard, cursor, ids)
            await self.submit(Finalize(tuple(ids)))
        except QueueError:
            # Left in the cursor with its outcome: whoever commits after
            # FINALIZE_GRACE writes the records again (they are idempotent).
            log.warning("could not finalize %d finished messages yet", len(ids), exc_info=True)
        finally:
            self._finalizing.difference_update(ids)


def _is_look(ops: list[Operation]) -> bool:
    return all(isinstance(op, Claim) and op.max_messages == 0 for op in ops)


def _ahead_or_open(cursor: Cursor, ref: SegmentRef) -> bool:
    """Whether the cursor still has ``ref`` in its window or ahead of it in its lane."""
    return any(s.ref == str(ref) for s in cursor.open) or is_unread(cursor, ref)


def _changed(before: Cursor, after: Cursor) -> bool:
    same_header = msgspec.structs.replace(
        after,
        version=before.version,
        commit=before.commit,
        recent_commits=before.recent_commits,
    )
    return same_header != before
