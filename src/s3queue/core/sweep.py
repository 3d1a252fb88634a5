"""One pass of collection over a queue: what retention says is over is deleted.

A pass (a worker's background duty, or ``s3queue sweep``) takes the sweeper lease
in ``<queue>/sweeper`` and, in the same compare-and-swap write, the watermarks
:mod:`s3queue.core.retention` computes from fresh cursor reads. Only then does it
delete, in this order:

1. segments below each lane's ``collected_before`` (the lanes are listed from their
   start, so what an interrupted pass left is found again), with the results of
   their messages (result keys sort by segment, so they are listed the same way);
2. dead letters and redrive records older than ``dead_ttl`` whose segment is
   collected, chain links older than ``result_ttl``, dedup markers whose retention
   ran out, and blobs (large payloads and results) nothing can reference any more.

Every deletion is of an object no reader can need: a crash at any point loses
nothing, and leaves only objects that a later pass deletes. Deleting is batched
(``delete_many``), and what a pass may spend beyond its fixed reads is bounded by
its :class:`Budget`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from s3queue import sources
from s3queue.core import layout
from s3queue.core.catalog import read_settings
from s3queue.core.clock import Clock
from s3queue.core.cursor import Cursor, decode_cursor
from s3queue.core.layout import SegmentRef
from s3queue.core.records import DedupMarker, Link, QueueSettings, decode, encode
from s3queue.core.retention import (
    LANES,
    SweeperLease,
    SweeperRecord,
    advance,
    is_collected,
    may_take,
    next_ripening,
)
from s3queue.errors import CorruptData, PreconditionFailed, QueueNotFound
from s3queue.storage import ObjectEntry, PutMode, Storage, UpdateVersion
from s3queue.storage.base import DELETE_BATCH, LIST_PAGE_SIZE

#: How long a dedup reservation without a message may be kept by a producer that is
#: still writing it (as ``queue.DEDUP_RESERVATION_TIMEOUT``, with room to spare).
RESERVATION_TIMEOUT = 600.0
#: Every this many passes a sweeper lists every lane, moved or not: what a pass
#: that crashed mid-way left below a watermark is deleted then.
RELIST = 10
#: How far behind a producer's clock may run (S3 refuses requests signed 15 min
#: off): a timer bucket is deleted only once such a producer is past it too.
MAX_PRODUCER_SKEW = 900.0
#: What kinds of objects a pass removes, as its report names them.
KINDS = ("segments", "results", "dead", "redriven", "links", "dedup", "blobs")


@dataclass
class Budget:
    """Requests a pass may still make (None: no limit, for a pass run by hand)."""

    left: int | None = None
    spent: int = 0

    def spend(self, n: int = 1) -> None:
        self.spent += n
        if self.left is not None:
            self.left -= n

    @property
    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0


@dataclass
class SweepReport:
    """What one pass did. ``held_by`` names the holder of the sweeper lease when the
    pass left the work to it; ``complete`` is False when the budget ran out first
    (the next pass goes on)."""

    queue: str
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    requests: int = 0
    held_by: str | None = None
    complete: bool = True
    #: The store time at which the next checkpoint ripens (None: none waits): when
    #: a next pass has something to do, however idle the queue.
    ripens_at: float | None = None

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "removed": dict(self.removed),
            "total": self.total,
            "requests": self.requests,
            "held_by": self.held_by,
            "complete": self.complete,
        }


async def read_record(storage: Storage, queue: str) -> tuple[SweeperRecord, str | None]:
    """The sweeper record of ``queue`` and its ETag (an empty record, None, if none)."""
    key = layout.sweeper_key(queue)
    stored = await storage.get(key)
    if stored is None:
        return SweeperRecord(), None
    return decode(stored.data, SweeperRecord, what="sweeper record", key=key), stored.etag


class Sweeper:
    """Runs collection passes over one queue on behalf of ``owner``."""

    def __init__(
        self, storage: Storage, name: str, clock: Clock, owner: str, *, skew_margin: float = 2.0
    ) -> None:
        self.storage = storage
        self.name = name
        self.clock = clock
        self.owner = owner
        self.skew_margin = skew_margin
        self.key = layout.sweeper_key(name)
        #: Where each unordered prefix's scan goes on from (kept in memory: a new
        #: holder starts over, which only costs it one more listing).
        self._scans: dict[str, str] = {}
        #: The shard the next pass lists first, and per shard a time no payload blob
        #: its segments reference is older than by more than BLOB_GRACE / 2.
        self._next_shard = 0
        self._floors: dict[int, float] = {}
        #: When (store time) the lease this pass wrote runs out.
        self._lease_ends = math.inf
        #: Per shard and lane, the watermark below which this sweeper has deleted
        #: everything it listed: the lane need not be listed again until it moves.
        self._swept_to: dict[tuple[int, str], int] = {}

    async def read(self) -> tuple[SweeperRecord, str | None]:
        return await read_record(self.storage, self.name)

    async def run(self, *, lease_for: float, budget: Budget, steal: bool = False) -> SweepReport:
        """One pass. Without ``steal`` it does nothing while another owner's lease
        runs; with it (a pass run by hand) it takes the lease over."""
        report = SweepReport(self.name)
        record, etag = await self.read()
        budget.spend()
        now = self.clock()
        if not steal and not may_take(record, self.owner, now, self.skew_margin):
            assert record.lease is not None
            report.held_by = record.lease.owner
            report.requests = budget.spent
            return report
        settings = await self._settings()
        record = record.of_queue(settings)
        cursors = await self._cursors(settings.shards)
        budget.spend(1 + settings.shards)
        committed = await self._commit(record, etag, cursors, settings, lease_for)
        budget.spend()
        if committed is None:
            report.held_by = "another sweeper (it took the lease meanwhile)"
        else:
            report.ripens_at = next_ripening(committed, settings.result_ttl)
            await self._collect(committed, settings, budget, report)
        report.requests = budget.spent
        return report

    async def _settings(self) -> QueueSettings:
        settings = await read_settings(self.storage, self.name)
        if settings is None:
            raise QueueNotFound(
                f"queue {self.name!r} does not exist (its queue.json is gone)",
                suggestion="nothing to sweep; s3queue queues lists the queues",
            )
        return settings

    async def _cursors(self, shards: int) -> dict[int, Cursor]:
        keys = [layout.cursor_key(self.name, k) for k in range(shards)]
        stored = await asyncio.gather(*(self.storage.get(key) for key in keys))
        cursors: dict[int, Cursor] = {}
        for shard, (key, found) in enumerate(zip(keys, stored, strict=True)):
            if found is None:
                continue  # never written: nothing of this shard can be collected
            try:
                cursors[shard] = decode_cursor(found.data, key)
            except CorruptData:
                continue  # doctor's business; nothing of it is collected meanwhile
        return cursors

    async def _commit(
        self,
        record: SweeperRecord,
        etag: str | None,
        cursors: dict[int, Cursor],
        settings: QueueSettings,
        lease_for: float,
    ) -> SweeperRecord | None:
        """Write the lease and the new watermarks; None if another took the lease."""
        now = self.clock()
        lease = SweeperLease(
            owner=self.owner, token=sources.token_hex(8), expires_at=now + lease_for
        )
        self._lease_ends = lease.expires_at
        updated = msgspec.structs.replace(
            record,
            version=record.version + 1,
            lease=lease,
            shards=advance(record, cursors, now, settings.result_ttl),
            passes=record.passes + 1,
        )
        try:
            mode: PutMode = "create" if etag is None else UpdateVersion(etag)
            await self.storage.put(self.key, encode(updated), mode=mode)
        except PreconditionFailed:
            return None
        return updated

    async def release(self) -> None:
        """Give the lease up (a worker stopping), so another takes it at once."""
        record, etag = await self.read()
        if etag is None or record.lease is None or record.lease.owner != self.owner:
            return
        released = msgspec.structs.replace(record, version=record.version + 1, lease=None)
        try:
            await self.storage.put(self.key, encode(released), mode=UpdateVersion(etag))
        except PreconditionFailed:
            return

    # --- deleting --------------------------------------------------------------------

    async def _collect(
        self, record: SweeperRecord, settings: QueueSettings, budget: Budget, report: SweepReport
    ) -> None:
        # The lanes may take half of what is left, so that the unordered scans (dead
        # letters, links, dedup markers, blobs) move on at every pass too; and the
        # lanes go on from the shard where the last pass stopped, so that every
        # shard is reached however small the budget.
        lanes = Budget(None if budget.left is None else max(1, budget.left // 2))
        shards = settings.shards
        for step in range(shards):
            shard = (self._next_shard + step) % shards
            if lanes.exhausted:
                self._next_shard = shard
                report.complete = False
                break
            started = self.clock()
            oldest = await self._shard(record, settings, shard, lanes, report)
            if oldest is not None and not lanes.exhausted:
                # No segment of this shard, even one written since, references a
                # payload blob older than this by more than BLOB_GRACE / 2.
                self._floors[shard] = min([started, *oldest])
        else:
            self._next_shard = 0
        budget.spend(lanes.spent)
        now = self.clock()
        if not settings.results_by_segment:
            await self._scan(
                layout.results_prefix(self.name),
                lambda e: self._result_collected(record, e.key),
                budget,
                report,
                "results",
            )
        await self._scan_records(record, settings, now, budget, report)
        if len(self._floors) >= shards:  # every shard listed at least once
            floor = min(self._floors[k] for k in range(shards))
            await self._scan(
                layout.blobs_prefix(self.name),
                lambda e: self._blob_unreferenced(record, e, floor),
                budget,
                report,
                "blobs",
            )
        await self._dedup(settings, record, now, budget, report)

    async def _shard(
        self,
        record: SweeperRecord,
        settings: QueueSettings,
        shard: int,
        budget: Budget,
        report: SweepReport,
    ) -> list[float] | None:
        """Collect the lanes of ``shard`` whose watermark moved since this sweeper
        listed them whole (all of them every RELIST passes, for what a crash left);
        when each first segment kept was written, or None if a lane was skipped."""
        oldest: list[float] = []
        listed_all = True
        retention = record.shards.get(shard)
        for lane in LANES:
            mark = 0 if retention is None else retention.lane(lane).collected_before
            if self._swept_to.get((shard, lane)) == mark and record.passes % RELIST:
                listed_all = False
                continue
            clean = await self._lane(record, shard, lane, budget, report, oldest)
            if settings.results_by_segment:
                await self._lane_results(record, shard, lane, budget, report)
            if clean and not budget.exhausted:
                self._swept_to[(shard, lane)] = mark
        return oldest if listed_all else None

    async def _lane(
        self,
        record: SweeperRecord,
        shard: int,
        lane: str,
        budget: Budget,
        report: SweepReport,
        oldest: list[float],
    ) -> bool:
        """Delete the lane's segments below its watermark; note when the first one
        kept was written (blobs older than every segment kept are unreferenced).
        Whether none is left below the watermark (some may be too young yet)."""
        prefix = layout.lane_segments_prefix(self.name, shard, lane)
        doomed: list[str] = []
        now = self.clock()
        clean = True
        async for entry in self._listed(prefix, budget):
            found = layout.segment_of(self.name, entry.key)
            if found is None:
                continue
            collected = is_collected(record, shard, found[1])
            if not collected or not _old_enough(found[1], entry, now):
                clean = clean and not collected
                if entry.modified is not None:
                    oldest.append(entry.modified)
                if lane != "timers":
                    break  # sorted by seq: the rest are kept too
                continue
            doomed.append(entry.key)
        await self._delete(doomed, budget, report, "segments")
        return clean

    async def _lane_results(
        self, record: SweeperRecord, shard: int, lane: str, budget: Budget, report: SweepReport
    ) -> None:
        prefix = layout.lane_results_prefix(self.name, shard, lane)
        doomed: list[str] = []
        async for entry in self._listed(prefix, budget):
            if not self._result_collected(record, entry.key):
                break  # sorted by segment: the rest are kept too
            doomed.append(entry.key)
        await self._delete(doomed, budget, report, "results")

    def _result_collected(self, record: SweeperRecord, key: str) -> bool:
        mid = layout.result_id(self.name, key)
        return mid is not None and self._collected(record, mid)

    def _blob_unreferenced(self, record: SweeperRecord, entry: ObjectEntry, floor: float) -> bool:
        found = layout.blob_of(self.name, entry.key)
        if found is None:
            return False
        kind, mid = found
        if kind == "result":
            return mid is not None and self._collected(record, mid)
        # A payload blob is referenced only by a segment written at most BLOB_GRACE/2
        # after it: older than every segment kept by more than that, none can.
        return entry.modified is not None and entry.modified < floor - layout.BLOB_GRACE

    async def _scan_records(
        self,
        record: SweeperRecord,
        settings: QueueSettings,
        now: float,
        budget: Budget,
        report: SweepReport,
    ) -> None:
        def letter_over(entry: ObjectEntry, mid: str | None) -> bool:
            if mid is None or not _aged(entry, settings.dead_ttl, now):
                return False
            # Kept while its segment is: until then the segment would read as
            # completed without it.
            return self._collected(record, mid)

        name = self.name
        await self._scan(
            layout.dead_prefix(name),
            lambda e: letter_over(e, layout.letter_id(name, e.key)),
            budget,
            report,
            "dead",
        )
        await self._scan(
            layout.redriven_prefix(name),
            lambda e: letter_over(e, layout.redriven_id(name, e.key)),
            budget,
            report,
            "redriven",
        )

        def link_over(data: bytes, key: str) -> bool:
            # Kept while the step it names is: a step still waiting needs it (its
            # chain's handle follows it, and a duplicate parent must find it).
            try:
                link = decode(data, Link, what="chain link", key=key)
            except CorruptData:
                return False  # doctor's business
            return self._collected(record, link.id)

        links = layout.links_prefix(name)
        await self._read_over(links, settings.result_ttl, link_over, budget, report, "links")

    def _collected(self, record: SweeperRecord, mid: str) -> bool:
        address = layout.parse_id(mid)
        return address is not None and is_collected(record, address.shard, address.segment)

    async def _read_over(
        self,
        prefix: str,
        age: float,
        over: Callable[[bytes, str], bool],
        budget: Budget,
        report: SweepReport,
        kind: str,
    ) -> None:
        """Records under ``prefix`` older than ``age`` are read (one GET each) and
        deleted when ``over`` says so."""
        now = self.clock()
        candidates: list[str] = []

        def candidate(entry: ObjectEntry) -> bool:
            if _aged(entry, age, now):
                candidates.append(entry.key)
            return False

        await self._scan(prefix, candidate, budget, report, kind)
        doomed = []
        for key in candidates:
            if budget.exhausted:
                report.complete = False
                break
            stored = await self.storage.get(key)
            budget.spend()
            if stored is not None and over(stored.data, key):
                doomed.append(key)
        await self._delete(doomed, budget, report, kind)

    async def _dedup(
        self,
        settings: QueueSettings,
        record: SweeperRecord,
        now: float,
        budget: Budget,
        report: SweepReport,
    ) -> None:
        """Dedup markers whose key may be used again: read (one GET each) only once
        they are old enough to be over."""
        await self._read_over(
            layout.dedup_prefix(self.name),
            settings.dedup_retention,
            lambda data, key: self._marker_over(data, key, record, settings, now),
            budget,
            report,
            "dedup",
        )

    def _marker_over(
        self, data: bytes, key: str, record: SweeperRecord, settings: QueueSettings, now: float
    ) -> bool:
        try:
            marker = decode(data, DedupMarker, what="dedup marker", key=key)
        except CorruptData:
            return False  # doctor's business
        if marker.finished_at is not None:
            return marker.finished_at + settings.dedup_retention <= now
        if not marker.id:
            return marker.reserved_at + RESERVATION_TIMEOUT <= now
        # Its message finished long ago (its segment is collected) but the marker was
        # never told: the producer's enqueue time plus both retentions is past.
        return self._collected(record, marker.id) and (
            marker.reserved_at + settings.dedup_retention + settings.result_ttl <= now
        )

    async def _scan(
        self,
        prefix: str,
        doomed: Callable[[ObjectEntry], bool],
        budget: Budget,
        report: SweepReport,
        kind: str,
    ) -> None:
        """Go on scanning ``prefix`` from where the last pass stopped, deleting what
        ``doomed`` picks, until the end or the budget."""
        start = self._scans.get(prefix)
        picked: list[str] = []
        last: str | None = None
        async for entry in self._listed(prefix, budget, start_after=start):
            last = entry.key
            if doomed(entry):
                picked.append(entry.key)
        ended = not budget.exhausted
        if ended:
            self._scans.pop(prefix, None)
        else:
            report.complete = False
            if last is not None:
                self._scans[prefix] = last
        await self._delete(picked, budget, report, kind)

    async def _listed(
        self, prefix: str, budget: Budget, *, start_after: str | None = None
    ) -> AsyncIterator[ObjectEntry]:
        """The keys under ``prefix`` page by page, while the budget lasts."""
        after = start_after
        while not budget.exhausted:
            page = await self.storage.list(prefix, start_after=after, limit=LIST_PAGE_SIZE)
            budget.spend()
            for entry in page:
                yield entry
            if len(page) < LIST_PAGE_SIZE:
                return
            after = page[-1].key

    async def _delete(
        self, keys: list[str], budget: Budget, report: SweepReport, kind: str
    ) -> None:
        if not keys:
            return
        if self.clock() >= self._lease_ends - self.skew_margin:
            # The pass outlasted its lease: another sweeper may hold it now. Deleting
            # on would be safe (below written watermarks) but twice the work.
            budget.left = 0
            report.complete = False
            return
        # Budgeted as S3 bills them, 1,000 keys a request: a store without a bulk
        # delete (the local directory) sends one per key, which it does not bill.
        await self.storage.delete_many(keys)
        budget.spend(-(-len(keys) // DELETE_BATCH))
        report.removed[kind] += len(keys)


def _old_enough(ref: SegmentRef, entry: ObjectEntry, now: float) -> bool:
    """Whether a segment below the watermark may go now. Not while younger than
    SEGMENT_MIN_AGE: a producer may still take its number for free. A timer bucket
    not before a producer whose clock is as far behind as tolerated would stop
    writing to it (its seal goes with it)."""
    if entry.modified is not None and entry.modified > now - layout.SEGMENT_MIN_AGE:
        return False
    if ref.is_timer:
        end = ref.bucket + layout.TIMER_BUCKET + layout.TIMER_SEAL_MARGIN
        return end + MAX_PRODUCER_SKEW <= now
    return True


def _aged(entry: ObjectEntry, ttl: float, now: float) -> bool:
    return entry.modified is not None and entry.modified + ttl <= now
