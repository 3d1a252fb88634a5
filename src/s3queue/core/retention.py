"""What may be collected, and who collects it: the sweeper's record, pure logic only.

``<queue>/sweeper`` is rewritten only by compare-and-swap, by the one process that
holds its lease (a worker, or ``s3queue sweep``). It keeps, per shard and lane:

- checkpoints ``(frontier, seen_at)``: at store time ``seen_at``, every segment of
  the lane below ``frontier`` had all its messages finished and their records
  written (the cursor had moved past it);
- ``collected_before``: segments below it are being or have been deleted, with the
  results of their messages. It is written before anything is deleted and only
  ever grows, so a reader that finds neither a message nor its record below it
  knows the message expired, and a crash mid-deletion leaves only objects that the
  next pass (which lists from the lane's start) deletes.

A segment becomes collectable once a checkpoint that covers it is ``result_ttl``
old: its messages finished before ``seen_at``, so their status was kept at least
that long. Invariants: ``collected_before`` never exceeds a frontier the cursor
reached (the cursor only moves forward, so the cursor never points at a deleted
segment), and never decreases.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from s3queue import limits
from s3queue.core.cursor import Cursor
from s3queue.core.layout import HIGH_LANE, LOG_LANE, SegmentRef
from s3queue.core.records import DEAD_TTL, FORMAT, RESULT_TTL, QueueSettings

#: Checkpoints kept per lane, about: a new one is added only once the newest is
#: ``result_ttl / CHECKPOINTS`` old (so a segment is kept at most that much, plus a
#: pass interval, longer than its TTL). The newest is never moved later: in a busy
#: lane it would never ripen.
CHECKPOINTS = 32

#: A lane of a shard as the sweeper tracks it: the log, the express lane, or the
#: timer buckets (whose frontier is a bucket, not a sequence number).
LANES = ("log", "high", "timers")


class Checkpoint(msgspec.Struct, frozen=True, array_like=True):
    frontier: int
    seen_at: float


class LaneRetention(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    collected_before: int = 0
    checkpoints: list[Checkpoint] = []


class ShardRetention(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    log: LaneRetention = LaneRetention()
    high: LaneRetention = LaneRetention()
    timers: LaneRetention = LaneRetention()

    def lane(self, name: str) -> LaneRetention:
        lane: LaneRetention = getattr(self, name)
        return lane


class SweeperLease(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    token: str
    expires_at: float


class SweeperRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``<queue>/sweeper``: the sweeper's lease, and what it has collected."""

    format: int = FORMAT
    #: Counts every write, so that no two versions have the same bytes (no ABA).
    version: int = 0
    lease: SweeperLease | None = None
    shards: dict[int, ShardRetention] = {}
    passes: int = 0
    #: The ``created_at`` of the queue it belongs to: a record left behind by a
    #: deleted queue of the same name (a pass that wrote it during the delete)
    #: must not collect anything of a queue created since.
    queue_created_at: float = 0.0
    #: A random token of a record rebuilt by ``s3queue doctor``, which cannot count
    #: on the version of the unreadable one: two rebuilds from the same state
    #: would otherwise write equal bytes, and so equal ETags (no ABA).
    nonce: str = ""

    def of_queue(self, settings: QueueSettings) -> SweeperRecord:
        """This record if it belongs to the queue of ``settings``, else an empty one
        (whose version still counts on from this one's)."""
        if self.queue_created_at == settings.created_at:
            return self
        return SweeperRecord(version=self.version, queue_created_at=settings.created_at)


def lane_of(ref: SegmentRef) -> str:
    if ref.is_timer:
        return "timers"
    return "high" if ref.is_high else "log"


def position(ref: SegmentRef) -> int:
    """Where ``ref`` stands in its lane, in the unit of the lane's frontier."""
    return ref.bucket if ref.is_timer else ref.seq


def frontiers(cursor: Cursor) -> dict[str, int]:
    """Per lane, the first position the cursor still needs: every segment below it
    is finished, its records written (a message's bit is set only by Finalize)."""
    log, high = cursor.next_seq, cursor.next_high
    timers = cursor.timers_sealed_before
    if cursor.timers:
        timers = min(timers, min(cursor.timers))
    for segment in cursor.open:
        ref = SegmentRef.parse(segment.ref)
        if ref.bucket == LOG_LANE:
            log = min(log, ref.seq)
        elif ref.bucket == HIGH_LANE:
            high = min(high, ref.seq)
        else:
            timers = min(timers, ref.bucket)
    # A message cancelled before it was read keeps a finished flight until its
    # segment is taken in; such segments are ahead of the frontier already.
    return {"log": log, "high": high, "timers": timers}


def observe(lane: LaneRetention, frontier: int, now: float, ttl: float) -> LaneRetention:
    """``lane`` with the frontier seen at ``now``, and its collectable watermark."""
    checkpoints = list(lane.checkpoints)
    newest = checkpoints[-1] if checkpoints else None
    # A new checkpoint at most every ttl / CHECKPOINTS: a frontier seen sooner after
    # the newest is left for a later pass to record (collected a bit later). Never
    # replace the newest: refreshing its time at every pass would keep it from
    # ever becoming ripe while the frontier moves.
    if newest is None or (frontier > newest.frontier and now - newest.seen_at >= ttl / CHECKPOINTS):
        checkpoints.append(Checkpoint(frontier, now))
    ripe = [c for c in checkpoints if c.seen_at + ttl <= now]
    collected = max([lane.collected_before, *(c.frontier for c in ripe)])
    # The ripe ones are used up; only the last is kept, to show how far they went.
    kept = [c for c in checkpoints if c.seen_at + ttl > now and c.frontier > collected]
    return LaneRetention(collected_before=collected, checkpoints=kept[-CHECKPOINTS:])


def advance(
    record: SweeperRecord, cursors: dict[int, Cursor], now: float, ttl: float
) -> dict[int, ShardRetention]:
    """Each shard's retention after seeing ``cursors`` at ``now``."""
    shards = dict(record.shards)
    for shard, cursor in cursors.items():
        current = shards.get(shard, ShardRetention())
        seen = frontiers(cursor)
        lanes = {name: observe(current.lane(name), seen[name], now, ttl) for name in LANES}
        # Purged segments have no status to keep: collected at once.
        for name, purged in (("log", cursor.purged_before), ("high", cursor.purged_high_before)):
            if purged > lanes[name].collected_before:
                lanes[name] = msgspec.structs.replace(lanes[name], collected_before=purged)
        shards[shard] = ShardRetention(**lanes)
    return shards


def next_ripening(record: SweeperRecord, ttl: float) -> float | None:
    """When the first checkpoint that would move a watermark becomes ``ttl`` old."""
    times = [
        checkpoint.seen_at + ttl
        for retention in record.shards.values()
        for name in LANES
        for checkpoint in retention.lane(name).checkpoints
        if checkpoint.frontier > retention.lane(name).collected_before
    ]
    return min(times, default=None)


def is_collected(record: SweeperRecord | None, shard: int, ref: SegmentRef) -> bool:
    """Whether the segment ``ref`` of ``shard`` is below the collected watermark."""
    if record is None:
        return False
    retention = record.shards.get(shard)
    if retention is None:
        return False
    return position(ref) < retention.lane(lane_of(ref)).collected_before


def rebuilt_retention(cursor: Cursor, segments: list[SegmentRef]) -> ShardRetention:
    """A shard's retention rebuilt from its cursor and the segments it still has (for
    ``s3queue doctor --fix`` of an unreadable sweeper record): what is gone below
    the first segment left, and below the cursor's frontier, was collected."""
    seen = frontiers(cursor)
    lanes = {}
    for name in LANES:
        left = [position(ref) for ref in segments if lane_of(ref) == name]
        lanes[name] = LaneRetention(collected_before=min([seen[name], *left]))
    return ShardRetention(**lanes)


def may_take(record: SweeperRecord, owner: str, now: float, margin: float) -> bool:
    """Whether ``owner`` may take (or keep) the sweeper lease at ``now``."""
    lease = record.lease
    return lease is None or lease.owner == owner or lease.expires_at + margin <= now


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a queue keeps what finished messages leave: a completed (or
    cancelled) message's status and result ``result_ttl`` seconds after it finished,
    a dead letter ``dead_ttl`` seconds after it died (and never less than its
    segment, which ``result_ttl`` keeps). Checked when built."""

    result_ttl: float = RESULT_TTL
    dead_ttl: float = DEAD_TTL

    def __post_init__(self) -> None:
        object.__setattr__(self, "result_ttl", limits.TTL.check(self.result_ttl, "result_ttl"))
        object.__setattr__(self, "dead_ttl", limits.TTL.check(self.dead_ttl, "dead_ttl"))

    @classmethod
    def of(cls, settings: QueueSettings) -> Retention:
        return cls(settings.result_ttl, settings.dead_ttl)
