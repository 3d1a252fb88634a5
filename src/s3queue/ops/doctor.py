"""``s3queue doctor``: what is wrong with a queue's objects, and what would fix it.

It lists everything under the queue's prefix once (a LIST per 1,000 keys) and reads
each object it must check, changing nothing of the queue's: the only write without
``--fix`` is the store probe's own object (created and deleted, as on opening), which
checks that the store honours conditional writes. Each :class:`Finding` names the object,
the problem and what ``--fix`` does about it; a finding with no repair is reported
for a person to decide (foreign objects are never deleted, records whose loss would
make a status unknowable are kept).

Repairs lose nothing that is not lost already: an unreadable segment's bytes are
copied under ``quarantine/`` before it is replaced by an empty segment or set aside,
and a rebuilt cursor re-reads every segment of its shard, so its messages run again
(at-least-once) rather than never.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from s3queue import sources
from s3queue.core import layout, quarantine
from s3queue.core.cursor import Cursor, decode_cursor, encode_cursor, is_unread
from s3queue.core.layout import SegmentRef
from s3queue.core.records import (
    DeadLetter,
    DedupMarker,
    Link,
    QuarantineRecord,
    QueueSettings,
    RedriveRecord,
    ResultRecord,
    encode,
)
from s3queue.core.records import decode as decode_record
from s3queue.core.retention import SweeperRecord, rebuilt_retention
from s3queue.core.segment import Segment, decode_segment, encode_segment
from s3queue.errors import CorruptData, QueueError
from s3queue.queue import DEFAULT_SHARDS, Queue, probe_conditional_writes
from s3queue.storage import Storage

Repair = Callable[[], Awaitable[str]]

#: Side records checked by decoding them: (kind from layout.classify, type, what).
_RECORDS: list[tuple[str, type, str]] = [
    ("dead", DeadLetter, "dead letter"),
    ("result", ResultRecord, "result"),
    ("redriven", RedriveRecord, "redrive record"),
    ("dedup", DedupMarker, "dedup marker"),
    ("link", Link, "chain link"),
    ("quarantine", QuarantineRecord, "quarantine record"),
]


@dataclass
class Finding:
    key: str
    problem: str
    #: What ``--fix`` does; empty when it is left to a person.
    action: str = ""
    repair: Repair | None = field(default=None, repr=False)


@dataclass
class _Listing:
    """The queue's keys by kind, from one listing."""

    foreign: list[str] = field(default_factory=list)
    records: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: The segments of each shard (log, express lane and timer segments).
    segments: dict[int, list[SegmentRef]] = field(default_factory=lambda: defaultdict(list))

    def lane(self, shard: int, lane: int) -> list[int]:
        """The sequence numbers found in one log lane of a shard, in order."""
        return sorted(ref.seq for ref in self.segments[shard] if ref.bucket == lane)

    def timers(self, shard: int) -> list[SegmentRef]:
        return [ref for ref in self.segments[shard] if ref.is_timer]


class Doctor:
    """Examines one queue (opened read-only) and repairs what it found."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.storage = queue.storage
        self.name = queue.name

    async def examine(self) -> list[Finding]:
        listing = await self._list()
        findings = [
            Finding(key, "not an object s3queue writes: ignored (move it out of the queue)")
            for key in listing.foreign
        ]
        findings.extend(await self._check_store())
        for shard in range(self.queue.settings.shards):
            findings.extend(await self._check_shard(shard, listing))
        findings.extend(await self._check_records(listing))
        findings.extend(await self._check_sweeper(listing))
        return findings

    async def _check_sweeper(self, listing: _Listing) -> list[Finding]:
        """An unreadable sweeper record stops collection and the telling of expired
        messages: rebuilt, each lane counts as collected up to its first segment left
        (or the cursor's frontier, whichever is lower)."""
        key = layout.sweeper_key(self.name)
        stored = await self.storage.get(key)
        if stored is None:
            return []
        try:
            decode_record(stored.data, SweeperRecord, what="sweeper record", key=key)
            return []
        except CorruptData as error:
            problem = error.message

        async def rewrite() -> str:
            shards = {}
            for shard in range(self.queue.settings.shards):
                cursor = await self.queue.committers[shard].read()
                shards[shard] = rebuilt_retention(cursor, listing.segments[shard])
            created = self.queue.settings.created_at
            record = SweeperRecord(
                shards=shards, queue_created_at=created, nonce=sources.token_hex(8)
            )
            await self.storage.put(key, encode(record))
            return f"rewrote {key}"

        return [
            Finding(
                key,
                problem,
                "rewrite it: every lane collected up to its first segment left; the rest "
                "is collected again from now on",
                rewrite,
            )
        ]

    async def _list(self) -> _Listing:
        out = _Listing()
        for entry in await self.storage.list(layout.queue_prefix(self.name)):
            segment = layout.segment_of(self.name, entry.key)
            if segment is not None:
                shard, ref = segment
                out.segments[shard].append(ref)
                continue
            kind = layout.classify(self.name, entry.key)
            if kind is None:
                out.foreign.append(entry.key)
            else:
                out.records[kind].append(entry.key)
        return out

    async def _check_store(self) -> list[Finding]:
        try:
            await probe_conditional_writes(self.storage, self.name)
        except QueueError as error:
            return [Finding(self.storage.url, error.message)]
        return []

    # --- shards ----------------------------------------------------------------------

    async def _check_shard(self, shard: int, listing: _Listing) -> list[Finding]:
        key = layout.cursor_key(self.name, shard)
        stored = await self.storage.get(key)
        try:
            cursor = Cursor(shard=shard) if stored is None else decode_cursor(stored.data, key)
        except CorruptData as error:
            return [self._rebuild(shard, key, error, listing)]
        findings = []
        for lane in (layout.LOG_LANE, layout.HIGH_LANE):
            findings.extend(await self._check_lane(shard, lane, cursor, listing))
        for open_segment in cursor.open:
            ref = SegmentRef.parse(open_segment.ref)
            problem = await self._unreadable(shard, ref)
            if problem is not None:
                lost = len(quarantine.unfinished(shard, open_segment) or [])
                findings.append(
                    Finding(
                        ref.key(self.name, shard),
                        problem,
                        f"set it aside (quarantine) with its {lost} unfinished messages",
                        self._set_aside(shard, ref, problem),
                    )
                )
        return findings

    async def _check_lane(
        self, shard: int, lane: int, cursor: Cursor, listing: _Listing
    ) -> list[Finding]:
        """Segments ahead of the cursor: readable, and without a gap (the shard's
        consumers stop at a missing number and never read what follows it)."""
        start = cursor.next_high if lane == layout.HIGH_LANE else cursor.next_seq
        written = [
            seq for seq in listing.lane(shard, lane) if is_unread(cursor, SegmentRef(lane, seq))
        ]
        findings = []
        for seq in range(start, written[-1] + 1 if written else start):
            ref = SegmentRef(lane, seq)
            problem = "missing, so the segments after it are never read"
            if seq in written:
                found = await self._unreadable(shard, ref)
                if found is None:
                    continue
                problem = found
            findings.append(
                Finding(
                    ref.key(self.name, shard),
                    problem,
                    "keep its bytes under quarantine/ and put an empty segment in its place",
                    self._replace(shard, ref, problem),
                )
            )
        return findings

    async def _unreadable(self, shard: int, ref: SegmentRef) -> str | None:
        """Why the segment cannot be read, or None when it can."""
        key = ref.key(self.name, shard)
        stored = await self.storage.get(key)
        if stored is None:
            return "missing although the cursor still needs it"
        try:
            decode_segment(stored.data, key)
        except CorruptData as error:
            return error.message
        return None

    def _rebuild(self, shard: int, key: str, error: CorruptData, listing: _Listing) -> Finding:
        log = listing.lane(shard, layout.LOG_LANE)
        high = listing.lane(shard, layout.HIGH_LANE)
        timers = listing.timers(shard)
        segments = len(log) + len(high) + len(timers)
        return Finding(
            key,
            error.message,
            f"keep it under quarantine/ and rebuild it from the shard's {segments} segments: "
            "their messages run again (at-least-once), those already done included",
            lambda: self._write_rebuilt(shard, key, log, high, timers),
        )

    async def _write_rebuilt(
        self,
        shard: int,
        key: str,
        log: list[int],
        high: list[int],
        timers: list[SegmentRef],
    ) -> str:
        stored = await self.storage.get(key)
        if stored is not None:
            await self.storage.put(layout.quarantined_cursor_key(self.name, shard), stored.data)
        buckets: dict[int, int] = {}
        for ref in sorted(timers):
            buckets.setdefault(ref.bucket, ref.seq)
        cursor = Cursor(
            shard=shard,
            commit=sources.token_hex(8),
            next_seq=log[0] if log else 0,
            next_high=high[0] if high else 0,
            purged_before=log[0] if log else 0,
            purged_high_before=high[0] if high else 0,
            timers=buckets,
        )
        await self.storage.put(key, encode_cursor(cursor))
        return f"rebuilt {key}"

    def _replace(self, shard: int, ref: SegmentRef, reason: str) -> Repair:
        async def repair() -> str:
            await quarantine.record(
                self.storage, self.name, shard, ref, reason, self.queue.clock(), None
            )
            empty = Segment(
                writer=f"doctor.{sources.token_hex(4)}", created_at=self.queue.clock(), messages=[]
            )
            await self.storage.put(ref.key(self.name, shard), encode_segment(empty))
            return f"replaced {ref.key(self.name, shard)} by an empty segment"

        return repair

    def _set_aside(self, shard: int, ref: SegmentRef, reason: str) -> Repair:
        async def repair() -> str:
            await self.queue.committers[shard].set_aside(ref, reason)
            return f"set aside {ref.key(self.name, shard)}"

        return repair

    # --- side records -----------------------------------------------------------------

    async def _check_records(self, listing: _Listing) -> list[Finding]:
        findings = []
        for kind, record_type, what in _RECORDS:
            keys = [k for k in listing.records.get(kind, []) if not layout.is_quarantine_copy(k)]
            for start in range(0, len(keys), 256):
                batch = keys[start : start + 256]
                stored = await asyncio.gather(*(self.storage.get(k) for k in batch))
                for key, found in zip(batch, stored, strict=True):
                    if found is None:
                        continue
                    try:
                        decode_record(found.data, record_type, what=what, key=key)
                    except CorruptData as error:
                        findings.append(self._record_finding(kind, key, error))
        return findings

    def _record_finding(self, kind: str, key: str, error: CorruptData) -> Finding:
        if kind != "dedup":
            return Finding(
                key,
                f"{error.message} (left as it is: without it the message's status could not "
                "be told; restore it, or remove it by hand)",
            )

        async def forget() -> str:
            await self.storage.delete(key)
            return f"deleted {key}"

        return Finding(
            key,
            error.message,
            "delete it: the next enqueue with its dedup key is not deduplicated against "
            "earlier ones",
            forget,
        )


async def settings_finding(storage: Storage, name: str, error: CorruptData) -> Finding:
    """queue.json cannot be read: rewrite it, with the shard count its keys show."""
    shards = {
        shard
        for entry in await storage.list(layout.shards_prefix(name))
        if (shard := layout.shard_of(name, entry.key)) is not None
    }
    count = max(shards) + 1 if shards else DEFAULT_SHARDS

    async def rewrite() -> str:
        key = layout.settings_key(name)
        stored = await storage.get(key)
        if stored is not None:
            await storage.put(layout.quarantined_settings_key(name), stored.data)
        fresh = QueueSettings(name=name, shards=count, created_at=sources.wall())
        await storage.put(key, encode(fresh))
        return f"rewrote {key} with {count} shards"

    return Finding(
        layout.settings_key(name),
        error.message,
        f"keep it under quarantine/ and write new settings: {count} shards (from the keys), "
        "the other settings at their defaults",
        rewrite,
    )


async def repair(findings: list[Finding]) -> list[str]:
    """Apply every finding's repair in order; what was done."""
    done = []
    for finding in findings:
        if finding.repair is not None:
            done.append(await finding.repair())
    return done
