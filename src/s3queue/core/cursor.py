"""The consumer state of one shard, and its pure transitions.

A cursor is rewritten only by compare-and-swap. :func:`apply` takes the cursor that
was read, a batch of operations and the clock, and returns the next cursor and one
result per operation. It performs no I/O, so the same batch applied to the same
state always gives the same answer: that is what lets the commit loop re-apply a
batch after losing a race, and what the hypothesis model tests.

Invariants kept here:
- a message has at most one lease, and only the token that holds it may ack, fail,
  extend or release it, and only before ``expires_at`` (fencing);
- a lease is recovered only after ``expires_at + skew_margin``, so a holder whose
  clock runs a little ahead and a recoverer never overlap;
- the cursor's size is bounded by the open window and the in-flight messages,
  never by the backlog behind them (plus the messages cancelled before they were
  read, each kept as a finished flight until its segment is taken in);
- a cancelled message never completes afterwards, and a completed one is never
  reported cancelled: a cancel request stays on the lease, and whatever ends that
  lease (ack, fail, release, expiry) ends the message as cancelled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from s3queue.core.layout import HIGH_LANE, LOG_LANE, SegmentRef, parse_message_id
from s3queue.core.rates import Bucket, ShardRate, Tokens
from s3queue.core.records import FORMAT, NO_RAW, ErrorRecord, decode, encode
from s3queue.core.segment import Message, Segment
from s3queue.info import Failure

#: A finished message whose side records nobody finalized within this many seconds
#: (its worker died between commit and write) is finalized by whoever sees it.
FINALIZE_GRACE = 30.0
#: How many commit tokens a cursor remembers, so that a writer whose request timed
#: out can tell whether its commit landed even after others committed on top.
RECENT_COMMITS = 32
#: Messages waiting for a token of their rate key that a claim reads past to find
#: others, at most (see :func:`count_candidates`).
BLOCKED_AHEAD = 1024


def raw_or_none(raw: msgspec.Raw | None) -> msgspec.Raw | None:
    return None if raw is None or len(raw) == 0 else raw


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    owner: str
    claimed_at: float
    expires_at: float


#: How a message can end. Its outcome stays in the cursor until its side record is
#: written (a dead letter, or results/<id> for the other two).
FinalStatus = Literal["completed", "dead", "cancelled"]


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a finished message ended, kept until its side records are written."""

    status: FinalStatus
    finished_at: float
    result: msgspec.Raw = NO_RAW
    #: The key of a result over the blob threshold (then ``result`` is empty): the
    #: cursor, rewritten on every commit, holds only the key.
    result_blob: str | None = None


class Flight(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A message claimed at least once and not yet finished."""

    attempt: int
    lease: Lease | None = None
    visible_at: float = 0.0
    errors: list[ErrorRecord] = []
    progress: msgspec.Raw = NO_RAW
    outcome: Outcome | None = None
    #: Someone cancelled the message while it was leased: its holder learns it from
    #: its next extend, and however the lease ends, the message ends cancelled.
    cancel_requested: bool = False


class OpenSegment(msgspec.Struct, frozen=True, kw_only=True):
    """A segment in the window: how many messages it has and which are done."""

    ref: str
    count: int
    done: bytes


#: The name of a field of :class:`Counters` (tests/test_cursor.py checks they agree).
Counter = Literal[
    "ingested",
    "claimed",
    "completed",
    "dead",
    "retried",
    "recovered",
    "released",
    "stale_rejected",
    "quarantined",
    "cancelled",
]


class Counters(msgspec.Struct, frozen=True, kw_only=True):
    ingested: int = 0
    claimed: int = 0
    completed: int = 0
    dead: int = 0
    retried: int = 0
    recovered: int = 0
    released: int = 0
    stale_rejected: int = 0
    quarantined: int = 0
    cancelled: int = 0


class Cursor(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    shard: int
    version: int = 0
    commit: str = ""
    recent_commits: list[str] = []
    #: The next segment to take into the window, in the log and in the express lane.
    next_seq: int = 0
    next_high: int = 0
    open: list[OpenSegment] = []
    flights: dict[str, Flight] = {}
    #: Timer buckets registered and not sealed (unix seconds; JSON keys are strings,
    #: which msgspec reads back as ints) -> the next seq to take in.
    timers: dict[int, int] = {}
    timers_sealed_before: int = 0
    purged_before: int = 0
    purged_high_before: int = 0
    counters: Counters = Counters()
    #: Token buckets of rate limits (see rates.py), by key; left out of the JSON
    #: while there are none, so cursors of queues without limits stay as they were.
    buckets: dict[str, Bucket] | UnsetType = UNSET


def buckets_of(cursor: Cursor) -> dict[str, Bucket]:
    return {} if isinstance(cursor.buckets, UnsetType) else dict(cursor.buckets)


def encode_cursor(cursor: Cursor) -> bytes:
    return encode(cursor)


def decode_cursor(data: bytes, key: str) -> Cursor:
    return decode(data, Cursor, what="cursor", key=key)


# --- results -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    token: str
    attempt: int
    claimed_at: float
    expires_at: float
    message: Message
    errors: tuple[ErrorRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Stale:
    """The op's lease is no longer held by its token: nothing was changed."""

    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Extended:
    expires_at: float
    #: The message was cancelled: the holder should stop (its ack ends it cancelled).
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A holder's ack, failure or release that ended its message as cancelled,
    because a cancel was requested while it ran."""


CANCELLED = Cancelled()


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What a :class:`Cancel` did: "cancelled" (it will never run), "cancelling" (it is
    running: its holder is told), "finished" (nothing to do; ``finished`` says how it
    ended when the cursor still knows) or "not_found" (no such message)."""

    id: str
    status: Literal["cancelled", "cancelling", "finished", "not_found"]
    finished: FinalStatus | None = None


@dataclass(frozen=True, slots=True)
class Yielded:
    """A claim that gave the shard way to another process writing its cursor right
    now: nothing was claimed, but the shard may well hold work."""


YIELDED = Yielded()

#: Any operation's result (a batch's results, in :attr:`Transition.results`); each
#: operation's own is the type argument of its :class:`Op`.
Result = (
    list[Claimed] | Yielded | Stale | Failure | Extended | Cancelled | Cancellation | bool | None
)


# --- operations ----------------------------------------------------------------

R = TypeVar("R", covariant=True)


class Op(Generic[R]):
    """An operation on a cursor whose result is an ``R``: its entry in
    :attr:`Transition.results`, and what ``ShardCommitter.submit`` returns for it."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Ingest(Op[bool]):
    """Add a segment that exists in storage to the window (once, in order)."""

    ref: SegmentRef
    count: int


@dataclass(frozen=True, slots=True)
class Claim(Op[list[Claimed] | Yielded]):
    """Lease up to ``max_messages``, best first; none below ``min_priority`` (another
    shard holds better ones). ``max_messages=0`` only looks for new segments."""

    owner: str
    max_messages: int
    visibility_timeout: float
    min_priority: int | None = None
    #: The claiming process's rate limits as this shard's share: a message under one
    #: is taken only with a token of each bucket it falls under. The buckets of
    #: ``hold`` are left to another process that is spending them (rates.RATE_HOLD):
    #: messages under them are not taken.
    rates: tuple[ShardRate, ...] = ()
    hold: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack(Op[Stale | Cancelled | None]):
    id: str
    token: str
    result: msgspec.Raw | None = None
    #: A result over the blob threshold, written to this key before the ack.
    result_blob: str | None = None


@dataclass(frozen=True, slots=True)
class Fail(Op[Stale | Cancelled | Failure]):
    id: str
    token: str
    error: ErrorRecord
    retriable: bool
    delay: float


@dataclass(frozen=True, slots=True)
class Extend(Op[Stale | Extended]):
    id: str
    token: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Release(Op[Stale | Cancelled | None]):
    """Give a lease back unused: visible again at once, the attempt not counted
    (unless it was cancelled meanwhile: then it ends cancelled)."""

    id: str
    token: str


@dataclass(frozen=True, slots=True)
class Progress(Op[Stale | None]):
    id: str
    token: str
    value: msgspec.Raw


@dataclass(frozen=True, slots=True)
class Cancel(Op[Cancellation]):
    """Cancel one message of this shard, whatever its state (see :class:`Cancellation`)."""

    id: str


@dataclass(frozen=True, slots=True)
class Finalize(Op[None]):
    """Forget finished messages whose side records (dead letter, result) are written."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Quarantine(Op[bool | None]):
    """Set aside a segment that cannot be read: out of the window (its unfinished
    messages with it), or skipped if it is the next of its lane. Applied before
    anything else in a batch, so nothing else touches the segment."""

    ref: SegmentRef


@dataclass(frozen=True, slots=True)
class RegisterTimer(Op[bool]):
    bucket: int


@dataclass(frozen=True, slots=True)
class SealTimer(Op[None]):
    bucket: int


@dataclass(frozen=True, slots=True)
class Purge(Op[None]):
    """Drop everything pending, delayed and in flight: the log up to ``log_end``, the
    express lane up to ``high_end`` and each timer bucket up to its end in
    ``timer_ends`` ((bucket, end) pairs)."""

    log_end: int
    timer_ends: tuple[tuple[int, int], ...] = ()
    high_end: int = 0


def purge_of(refs: Iterable[SegmentRef]) -> Purge:
    """The purge of exactly the segments ``refs`` (a shard's listing): each lane
    and timer bucket ends after the last of them. Segments not listed, written
    later, lie at or past those ends and stay, so ``refs`` are the segments a
    purge may delete once it is committed."""
    ends: dict[int, int] = {}
    for ref in refs:
        ends[ref.bucket] = max(ends.get(ref.bucket, 0), ref.seq + 1)
    log_end = ends.pop(LOG_LANE, 0)
    high_end = ends.pop(HIGH_LANE, 0)
    return Purge(log_end, tuple(sorted(ends.items())), high_end)


Operation = (
    Ingest
    | Claim
    | Ack
    | Fail
    | Extend
    | Release
    | Progress
    | Cancel
    | Finalize
    | RegisterTimer
    | SealTimer
    | Purge
    | Quarantine
)


@dataclass(frozen=True, slots=True)
class Recovered:
    """A lease that expired and was taken back by this commit."""

    id: str
    owner: str
    attempt: int
    dead: bool
    #: It had been cancelled while leased: taking it back ended it cancelled.
    cancelled: bool = False


@dataclass
class Transition:
    cursor: Cursor
    results: list[Result]
    recovered: list[Recovered] = field(default_factory=list)
    #: Messages that finished in this commit and need a dead letter or result written.
    finishing: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rules:
    """Clock tolerance and window bounds, from the queue's settings."""

    skew_margin: float = 2.0
    max_open_segments: int = 1024
    finalize_grace: float = FINALIZE_GRACE


# --- helpers -------------------------------------------------------------------------


def unfinished_indices(segment: OpenSegment, indices: Iterable[int] | None = None) -> Iterator[int]:
    """The messages of a window segment that are not done, in order: of ``indices``,
    or all of them. The one reader of the ``done`` bitmap (message i is bit i % 8 of
    byte i // 8); a claim runs it over every message it passes."""
    done = segment.done
    for index in range(segment.count) if indices is None else indices:
        if not done[index >> 3] & (1 << (index & 7)):
            yield index


def is_done(segment: OpenSegment, index: int) -> bool:
    """Whether message ``index`` of a window segment is done."""
    return next(unfinished_indices(segment, (index,)), None) is None


class Lanes(Protocol):
    """Where a cursor (or the working copy of one) stands in each lane."""

    @property
    def next_seq(self) -> int: ...
    @property
    def next_high(self) -> int: ...
    @property
    def timers(self) -> Mapping[int, int]: ...
    @property
    def timers_sealed_before(self) -> int: ...


def is_unread(cursor: Lanes, ref: SegmentRef) -> bool:
    """Whether the cursor has yet to take ``ref`` into its window: at or past the
    next seq of its lane (for a timer segment, of a bucket the cursor registered)."""
    if ref.is_timer:
        next_seq = cursor.timers.get(ref.bucket)
        return next_seq is not None and ref.seq >= next_seq
    return ref.seq >= (cursor.next_high if ref.is_high else cursor.next_seq)


def is_ahead(cursor: Lanes, ref: SegmentRef) -> bool:
    """Whether ``ref`` may still be taken into the window: unread, or in a timer
    bucket not sealed yet, whether or not this cursor registered it (a producer
    registers a bucket before it writes there, but a cancel may come in between)."""
    if ref.is_timer and ref.bucket not in cursor.timers:
        return ref.bucket >= cursor.timers_sealed_before
    return is_unread(cursor, ref)


def _with_bit(done: bytes, index: int) -> bytes:
    buf = bytearray(done)
    buf[index >> 3] |= 1 << (index & 7)
    return bytes(buf)


def _all_done(segment: OpenSegment) -> bool:
    full, rest = divmod(segment.count, 8)
    if any(b != 0xFF for b in segment.done[:full]):
        return False
    return rest == 0 or segment.done[full] == (1 << rest) - 1


def message_of(segments: Mapping[str, Segment], mid: str) -> Message:
    address = parse_message_id(mid)
    return segments[str(address.segment)].messages[address.index]


class _State:
    """Mutable working copy of a cursor while one batch is applied."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.open: dict[str, OpenSegment] = {s.ref: s for s in cursor.open}
        self.flights = dict(cursor.flights)
        self.timers = dict(cursor.timers)
        self.timers_sealed_before = cursor.timers_sealed_before
        self.next_seq = cursor.next_seq
        self.next_high = cursor.next_high
        self.purged_before = cursor.purged_before
        self.purged_high_before = cursor.purged_high_before
        self.counters = msgspec.structs.asdict(cursor.counters)
        self.buckets = buckets_of(cursor)

    def count(self, name: Counter, n: int = 1) -> None:
        self.counters[name] += n

    def mark_done(self, mid: str) -> None:
        address = parse_message_id(mid)
        ref = str(address.segment)
        segment = self.open.get(ref)
        if segment is None:
            return
        segment = OpenSegment(
            ref=ref, count=segment.count, done=_with_bit(segment.done, address.index)
        )
        if _all_done(segment):
            del self.open[ref]
        else:
            self.open[ref] = segment

    def finish(
        self,
        mid: str,
        flight: Flight,
        status: FinalStatus,
        now: float,
        transition: Transition,
        message: Message | None = None,
        ack: Ack | None = None,
    ) -> None:
        """Record how a message ended. One that needs no side record (a first-try
        completion without result or dedup key: ``message`` tells) is done at once;
        the others keep their outcome in the cursor until the dead letter or result
        is written (two-phase), so a crash between the commit and that write loses
        nothing. A cancelled message always has a record: a done bit alone reads as
        completed."""
        self.count(status)
        if status == "completed" and message is not None and _quiet(flight, message, ack):
            del self.flights[mid]
            self.mark_done(mid)
            return
        outcome = Outcome(
            status=status,
            finished_at=now,
            result=(ack.result if ack is not None else None) or NO_RAW,
            result_blob=ack.result_blob if ack is not None else None,
        )
        self.flights[mid] = msgspec.structs.replace(flight, lease=None, outcome=outcome)
        transition.finishing.append(mid)

    def ahead(self, mid: str) -> bool:
        """Whether the segment of ``mid`` has yet to be taken into the window."""
        return is_ahead(self, parse_message_id(mid).segment)

    def holder(self, mid: str, token: str, now: float) -> Flight | Stale:
        """The flight if ``token`` holds a live lease on it, else why not."""
        flight = self.flights.get(mid)
        if flight is None or flight.lease is None or flight.lease.token != token:
            self.count("stale_rejected")
            return Stale(mid, "the lease is no longer held by this token")
        if flight.lease.expires_at <= now:
            self.count("stale_rejected")
            return Stale(mid, "the lease expired")
        return flight

    def freeze(self, commit: str) -> Cursor:
        ordered = sorted(self.open.values(), key=lambda s: SegmentRef.parse(s.ref))
        recent = [*self.cursor.recent_commits, commit][-RECENT_COMMITS:]
        return Cursor(
            shard=self.cursor.shard,
            version=self.cursor.version + 1,
            commit=commit,
            recent_commits=recent,
            next_seq=self.next_seq,
            next_high=self.next_high,
            open=ordered,
            flights=self.flights,
            timers=self.timers,
            timers_sealed_before=self.timers_sealed_before,
            purged_before=self.purged_before,
            purged_high_before=self.purged_high_before,
            counters=Counters(**self.counters),
            buckets=self.buckets or UNSET,
        )


def _quiet(flight: Flight, message: Message, ack: Ack | None) -> bool:
    # Progress too is kept past the end (in the result record), so that a
    # finished job does not appear to have lost it.
    return (
        (ack is None or (ack.result is None and ack.result_blob is None))
        and message.dedup_key is None
        and not flight.errors
        and not flight.progress
    )


def _recover_expired(
    state: _State, segments: Mapping[str, Segment], now: float, rules: Rules, t: Transition
) -> None:
    for mid, flight in list(state.flights.items()):
        lease = flight.lease
        if lease is None or lease.expires_at + rules.skew_margin > now:
            continue
        error = ErrorRecord(
            attempt=flight.attempt,
            at=now,
            type="LeaseExpired",
            message=f"the lease of worker {lease.owner} expired before it acked",
            worker=lease.owner,
        )
        flight = msgspec.structs.replace(flight, errors=[*flight.errors, error])
        cancelled = flight.cancel_requested
        dead = not cancelled and flight.attempt >= message_of(segments, mid).max_attempts
        t.recovered.append(Recovered(mid, lease.owner, flight.attempt, dead, cancelled))
        state.count("recovered")
        if cancelled:
            # Cancelled while it ran: never retried, whatever attempts it has left.
            state.finish(mid, flight, "cancelled", now, t)
        elif dead:
            state.finish(mid, flight, "dead", now, t)
        else:
            # Visible at once (0: to every process, whatever its clock estimate).
            state.flights[mid] = msgspec.structs.replace(flight, lease=None, visible_at=0.0)


#: Claimable messages, best first (see :func:`_ranked`).
Ranked = Iterator[tuple[str, Message]]


def count_candidates(
    cursor: Cursor,
    segments: Mapping[str, Segment],
    now: float,
    enough: int,
    rates: Sequence[ShardRate] = (),
) -> int:
    """How many messages of the window are claimable, counting no further than
    ``enough`` (a claim only needs to know whether the window holds that many).

    Messages whose rate key has no token now do not count, so that a claim reads
    past them to the others, but only up to BLOCKED_AHEAD of them: a backlog of one
    key must not draw the whole log into the window. The queue's own bucket is left
    out: when it is empty, no message of the log could be taken either."""
    ranked = _ranked(_State(cursor), segments, now)
    if rates:
        ranked = _unblocked(ranked, Tokens(buckets_of(cursor), rates, now, shard=cursor.shard))
    return sum(1 for _ in itertools.islice(ranked, enough))


def _unblocked(ranked: Ranked, tokens: Tokens) -> Ranked:
    """``ranked`` without the messages whose key has no token, up to BLOCKED_AHEAD."""
    blocked = 0
    for mid, message in ranked:
        if blocked < BLOCKED_AHEAD and tokens.blocked(message.rate_key):
            blocked += 1
            continue
        yield mid, message


def best_waiting(
    cursor: Cursor,
    segments: Mapping[str, Segment],
    now: float,
    rates: Sequence[ShardRate] = (),
    *,
    hold: Sequence[str] = (),
) -> int | None:
    """The priority of the best message claimable now (with a token, when it falls
    under a limit of ``rates``), None when there is none."""
    ranked = _ranked(_State(cursor), segments, now)
    if rates:
        tokens = Tokens(buckets_of(cursor), rates, now, hold=hold, shard=cursor.shard)
        ranked = _admitted(ranked, tokens)
    for _, message in ranked:
        return message.priority
    return None


def oldest_waiting(cursor: Cursor, segments: Mapping[str, Segment], now: float) -> float | None:
    """When the longest-waiting message claimable now was enqueued, None when none
    is: how long a shard's backlog has gone untaken (rate limits aside)."""
    ranked = _ranked(_State(cursor), segments, now)
    return min((message.enqueued_at for _, message in ranked), default=None)


def oldest_lease(cursor: Cursor, now: float) -> float | None:
    """When the longest-held lease still running was claimed; None when none is:
    whether its holders are busy with long jobs, or take and finish work at once."""
    return min(
        (
            f.lease.claimed_at
            for f in cursor.flights.values()
            if f.lease is not None and f.outcome is None and f.lease.expires_at > now
        ),
        default=None,
    )


def _admitted(ranked: Ranked, tokens: Tokens) -> Ranked:
    """The messages of ``ranked`` that get their tokens, spending them as they go."""
    for mid, message in ranked:
        if tokens.exhausted:
            return
        if tokens.take(message.rate_key):
            yield mid, message


def rate_due(
    cursor: Cursor, segments: Mapping[str, Segment], now: float, rates: Sequence[ShardRate]
) -> float | None:
    """When the first message claimable now but for its tokens gets them (it may be
    past); None when no such message waits. A worker whose claim was held back by
    rate limits comes back then."""
    tokens = Tokens(buckets_of(cursor), rates, now, shard=cursor.shard)
    # No message can have its tokens before the queue's bucket has one.
    queue_wide = tokens.arrival(None)
    floor = -math.inf if queue_wide is None else queue_wide
    due = math.inf
    for _, message in _ranked(_State(cursor), segments, now):
        arrival = tokens.arrival(message.rate_key)
        if arrival is not None and arrival < due:
            due = arrival
            if due <= max(floor, now):
                break
    return None if due == math.inf else due


Levels = tuple[tuple[int, Sequence[int]], ...]
#: Per-segment index of priorities, keyed by the segment object's id; the entry
#: holds the segment itself, so an id cannot be reused while its entry exists.
_LEVELS: dict[int, tuple[Segment, Levels]] = {}
_LEVELS_MAX = 8192


def levels(segment: Segment) -> Levels:
    """The segment's priorities, highest first, each with its message indices in
    order. Segments are immutable, so this is computed once per segment."""
    entry = _LEVELS.get(id(segment))
    if entry is not None and entry[0] is segment:
        return entry[1]
    messages = segment.messages
    first = messages[0].priority if messages else 0
    result: Levels
    if all(m.priority == first for m in messages):
        result = ((first, range(len(messages))),)
    else:
        by_priority: dict[int, list[int]] = {}
        for index, message in enumerate(messages):
            by_priority.setdefault(message.priority, []).append(index)
        result = tuple(sorted(by_priority.items(), key=lambda kv: -kv[0]))
    if len(_LEVELS) >= _LEVELS_MAX:
        _LEVELS.clear()
    _LEVELS[id(segment)] = (segment, result)
    return result


def _ranked(
    state: _State,
    segments: Mapping[str, Segment],
    now: float,
    min_priority: int | None = None,
) -> Iterator[tuple[str, Message]]:
    """Claimable messages of the window, lazily, best first: by priority, then
    segment order, then position. A claim takes the first few; it must not pay for
    sorting the whole window, which can hold the backlog of the express lane."""
    shard = state.cursor.shard
    by_level: dict[int, list[tuple[str, Sequence[int]]]] = {}
    for ref in sorted(state.open, key=SegmentRef.parse):
        for priority, indices in levels(segments[ref]):
            by_level.setdefault(priority, []).append((ref, indices))
    for priority in sorted(by_level, reverse=True):
        if min_priority is not None and priority < min_priority:
            return
        for ref, indices in by_level[priority]:
            messages = segments[ref].messages
            # Ids built by hand: this loop runs for many messages on every claim,
            # and MessageAddress formatting was most of its time.
            prefix = f"{shard}-{ref}-"
            for index in unfinished_indices(state.open[ref], indices):
                mid = prefix + str(index)
                message = messages[index]
                if _visible_at(message, state.flights.get(mid)) <= now:
                    yield mid, message


def next_due(
    cursor: Cursor,
    segments: Mapping[str, Segment],
    now: float,
    rules: Rules,
    *,
    after: float = -math.inf,
) -> float | None:
    """The earliest time at which this cursor, as it stands, has work: a delayed or
    retried message becomes visible, a lease can be recovered, a timer bucket falls
    due, or a finished message's records are overdue; None if never. Times up to
    ``after`` are passed over (a claim made then found nothing to do with them), and
    messages of segments not in ``segments`` are left out (flights are not)."""
    dues = [
        due
        for mid, flight in cursor.flights.items()
        if (due := _flight_due(flight, rules)) > after
        # Cancelled before its segment was read: nothing to do until it is.
        and not (flight.outcome is not None and is_ahead(cursor, parse_message_id(mid).segment))
    ]
    for open_segment in cursor.open:
        segment = segments.get(open_segment.ref)
        if segment is None:
            continue
        prefix = f"{cursor.shard}-{open_segment.ref}-"
        for index, message in enumerate(segment.messages):
            if message.visible_at > after and (prefix + str(index)) not in cursor.flights:
                dues.append(message.visible_at)
    dues.extend(float(b) for b in cursor.timers if b > after)
    return max(min(dues), now) if dues else None


def _flight_due(flight: Flight, rules: Rules) -> float:
    if flight.outcome is not None:
        return flight.outcome.finished_at + rules.finalize_grace
    if flight.lease is not None:
        return flight.lease.expires_at + rules.skew_margin
    return flight.visible_at


def _visible_at(message: Message, flight: Flight | None) -> float:
    """When the message can be claimed; infinity while leased or finishing."""
    if flight is None:
        return message.visible_at
    if flight.lease is None and flight.outcome is None:
        return flight.visible_at
    return math.inf


def apply(
    cursor: Cursor,
    operations: list[Operation],
    segments: Mapping[str, Segment],
    *,
    now: float,
    commit: str,
    new_token: Callable[[], str],
    rules: Rules = Rules(),
) -> Transition:
    """Apply ``operations`` in order to ``cursor`` at time ``now``.

    ``segments`` must hold every open segment and every segment being ingested.
    Expired leases are recovered first, so a stale holder's op in the same batch
    is rejected.
    """
    state = _State(cursor)
    t = Transition(cursor, [])
    # Segments of the window set aside go first: nothing else may touch them.
    for op in operations:
        if isinstance(op, Quarantine) and str(op.ref) in state.open:
            _quarantine(state, op.ref)
    _recover_expired(state, segments, now, rules, t)
    for op in operations:
        t.results.append(_apply_one(state, op, segments, now, new_token, t))
    t.cursor = state.freeze(commit)
    return t


def _apply_one(  # noqa: C901 - a match with one case per operation
    state: _State,
    op: Operation,
    segments: Mapping[str, Segment],
    now: float,
    new_token: Callable[[], str],
    t: Transition,
) -> Result:
    match op:
        case Claim():
            return _claim(state, op, segments, now, new_token)
        # Operations of a lease holder: applied only with the token that holds it.
        case Ack():
            return _ack(state, op, segments, now, t)
        case Fail():
            return _fail(state, op, segments, now, t)
        case Extend():
            return _extend(state, op, now)
        case Release():
            return _release(state, op, now, t)
        case Progress():
            return _progress(state, op, now)
        case Cancel():
            return _cancel(state, op, segments, now, t)
        # Operations on what the window holds: segments, timers, finished messages.
        case Ingest():
            return _ingest(state, op, t)
        case Quarantine():
            return _step_over(state, op, t)
        case RegisterTimer():
            return _register_timer(state, op)
        # Those without a result.
        case Finalize():
            _finalize(state, op)
        case SealTimer():
            _seal_timer(state, op)
        case Purge():
            _purge(state, op)
        case _:
            raise TypeError(f"unknown operation {op!r}")
    return None


def _ack(
    state: _State, op: Ack, segments: Mapping[str, Segment], now: float, t: Transition
) -> Stale | Cancelled | None:
    flight = state.holder(op.id, op.token, now)
    if isinstance(flight, Stale):
        return flight
    if flight.cancel_requested:
        # Its result is dropped: a cancelled message has none.
        state.finish(op.id, flight, "cancelled", now, t)
        return CANCELLED
    message = message_of(segments, op.id)
    state.finish(op.id, flight, "completed", now, t, message, op)
    return None


def _extend(state: _State, op: Extend, now: float) -> Stale | Extended:
    flight = state.holder(op.id, op.token, now)
    if isinstance(flight, Stale):
        return flight
    assert flight.lease is not None
    expires_at = max(flight.lease.expires_at, now + op.seconds)
    lease = msgspec.structs.replace(flight.lease, expires_at=expires_at)
    state.flights[op.id] = msgspec.structs.replace(flight, lease=lease)
    return Extended(expires_at, cancelled=flight.cancel_requested)


def _release(state: _State, op: Release, now: float, t: Transition) -> Stale | Cancelled | None:
    flight = state.holder(op.id, op.token, now)
    if isinstance(flight, Stale):
        return flight
    if flight.cancel_requested:
        # Given back unused, but cancelled meanwhile: it must not run again.
        state.finish(op.id, flight, "cancelled", now, t)
        return CANCELLED
    state.count("released")
    if flight.attempt <= 1 and not flight.errors:
        del state.flights[op.id]
    else:
        state.flights[op.id] = msgspec.structs.replace(
            flight, attempt=flight.attempt - 1, lease=None, visible_at=0.0
        )
    return None


def _progress(state: _State, op: Progress, now: float) -> Stale | None:
    flight = state.holder(op.id, op.token, now)
    if isinstance(flight, Stale):
        return flight
    state.flights[op.id] = msgspec.structs.replace(flight, progress=op.value)
    return None


def _step_over(state: _State, op: Quarantine, t: Transition) -> bool | None:
    """A segment set aside: in the window it is gone already (:func:`apply` drops
    it first). Not taken in yet: skipped in its place in its lane, as if it held no
    message."""
    if any(s.ref == str(op.ref) for s in state.cursor.open):
        return None
    return _ingest(state, Ingest(op.ref, 0), t)


def _finalize(state: _State, op: Finalize) -> None:
    for mid in op.ids:
        finished = state.flights.get(mid)
        # A message cancelled before its segment was read keeps its flight until the
        # segment is in the window: forgotten earlier, the ingest would bring it back.
        if finished is not None and finished.outcome is not None and not state.ahead(mid):
            del state.flights[mid]
            state.mark_done(mid)


def _cancel(
    state: _State, op: Cancel, segments: Mapping[str, Segment], now: float, t: Transition
) -> Cancellation:
    mid = op.id
    address = parse_message_id(mid)
    flight = state.flights.get(mid)
    if address.shard != state.cursor.shard:
        return Cancellation(mid, "not_found")
    if flight is not None:
        return _cancel_flight(state, mid, flight, now, t)
    ref = str(address.segment)
    window = state.open.get(ref)
    if window is not None:
        if address.index >= window.count:
            return Cancellation(mid, "not_found")
        if is_done(window, address.index):
            return Cancellation(mid, "finished")  # how, only its side record can tell
        state.finish(mid, Flight(attempt=0), "cancelled", now, t)
        return Cancellation(mid, "cancelled")
    if not state.ahead(mid):
        # Behind the window: finished, purged or set aside (only records can tell).
        return Cancellation(mid, "finished")
    # Not read yet: a finished flight waits for the segment, so that the message is
    # never claimed; the ingest then finalizes it. The segment must exist (the
    # committer passes it when it does), or the flight would wait forever.
    segment = segments.get(ref)
    if segment is None or address.index >= len(segment.messages):
        return Cancellation(mid, "not_found")
    state.count("cancelled")
    state.flights[mid] = Flight(attempt=0, outcome=Outcome(status="cancelled", finished_at=now))
    return Cancellation(mid, "cancelled")


def _cancel_flight(
    state: _State, mid: str, flight: Flight, now: float, t: Transition
) -> Cancellation:
    if flight.outcome is not None:
        return Cancellation(mid, "finished", flight.outcome.status)
    if flight.lease is not None:
        # Running: only its holder can stop it. Told by its next extend; however
        # the lease ends (ack, fail, release, expiry), the message ends cancelled.
        state.flights[mid] = msgspec.structs.replace(flight, cancel_requested=True)
        return Cancellation(mid, "cancelling")
    state.finish(mid, flight, "cancelled", now, t)  # waiting for a retry
    return Cancellation(mid, "cancelled")


def _register_timer(state: _State, op: RegisterTimer) -> bool:
    if op.bucket < state.timers_sealed_before:
        return False
    state.timers.setdefault(op.bucket, 0)
    return True


def _seal_timer(state: _State, op: SealTimer) -> None:
    state.timers.pop(op.bucket, None)
    state.timers_sealed_before = max(state.timers_sealed_before, op.bucket + 1)


def _purge(state: _State, op: Purge) -> None:
    ends = {LOG_LANE: op.log_end, HIGH_LANE: op.high_end, **dict(op.timer_ends)}

    def covered(ref: SegmentRef) -> bool:
        # Timer buckets sealed before the purge are covered whole: every segment
        # of theirs was taken in before the seal.
        sealed = ref.is_timer and ref.bucket < state.timers_sealed_before
        return sealed or ref.seq < ends.get(ref.bucket, 0)

    # What the purge's listing found goes; a segment written since (taken into the
    # window already, or a message of it cancelled before it was read) stays.
    for ref in [r for r in state.open if covered(SegmentRef.parse(r))]:
        del state.open[ref]
    for mid in [m for m in state.flights if covered(parse_message_id(m).segment)]:
        del state.flights[mid]
    # Counts restart with the queue's contents: "completed since the last purge".
    state.counters = msgspec.structs.asdict(Counters())
    state.next_seq = max(state.next_seq, op.log_end)
    state.purged_before = max(state.purged_before, op.log_end)
    state.next_high = max(state.next_high, op.high_end)
    state.purged_high_before = max(state.purged_high_before, op.high_end)
    # Buckets stay registered (a producer may still be adding to them); only the
    # segments that exist now are skipped.
    for bucket, end in op.timer_ends:
        if bucket >= state.timers_sealed_before:
            state.timers[bucket] = max(state.timers.get(bucket, 0), end)


def _quarantine(state: _State, ref: SegmentRef) -> None:
    """Drop a segment of the window, with the flights of its messages."""
    name = str(ref)
    del state.open[name]
    prefix = f"{state.cursor.shard}-{name}-"
    for mid in [m for m in state.flights if m.startswith(prefix)]:
        del state.flights[mid]
    state.count("quarantined")


def _ingest(state: _State, op: Ingest, t: Transition) -> bool:
    ref = op.ref
    if ref.is_timer:
        expected = state.timers.get(ref.bucket)
        if expected is None or expected != ref.seq:
            return False
        state.timers[ref.bucket] = ref.seq + 1
    elif ref.is_high:
        if ref.seq != state.next_high:
            return False
        state.next_high = ref.seq + 1
    else:
        if ref.seq != state.next_seq:
            return False
        state.next_seq = ref.seq + 1
    state.count("ingested", op.count)
    if op.count > 0:
        state.open[str(ref)] = OpenSegment(
            ref=str(ref), count=op.count, done=bytes((op.count + 7) // 8)
        )
    _ingested(state, str(ref), op.count > 0, t)
    return True


def _ingested(state: _State, ref: str, opened: bool, t: Transition) -> None:
    """Messages cancelled before their segment was read: now that it is in the window
    their records can be written and their flights finalized; a segment stepped over
    (set aside) takes them with it."""
    prefix = f"{state.cursor.shard}-{ref}-"
    for mid in [m for m, f in state.flights.items() if m.startswith(prefix) and f.outcome]:
        if opened:
            t.finishing.append(mid)
        else:
            del state.flights[mid]


def _claim(
    state: _State,
    op: Claim,
    segments: Mapping[str, Segment],
    now: float,
    new_token: Callable[[], str],
) -> list[Claimed]:
    claimed: list[Claimed] = []
    if op.max_messages <= 0:
        return claimed
    ranked = _ranked(state, segments, now, op.min_priority)
    if op.rates:
        tokens = Tokens(state.buckets, op.rates, now, hold=op.hold, shard=state.cursor.shard)
        chosen = list(itertools.islice(_admitted(ranked, tokens), op.max_messages))
        if chosen:
            # Written only with what it claimed: a claim that took nothing leaves
            # the cursor as it was (refilling is a function of time alone).
            state.buckets = tokens.buckets()
    else:
        chosen = list(itertools.islice(ranked, op.max_messages))
    for mid, message in chosen:
        previous = state.flights.get(mid)
        attempt = (previous.attempt if previous else 0) + 1
        errors = previous.errors if previous else []
        lease = Lease(
            token=new_token(),
            owner=op.owner,
            claimed_at=now,
            expires_at=now + op.visibility_timeout,
        )
        state.flights[mid] = Flight(attempt=attempt, lease=lease, errors=errors)
        state.count("claimed")
        claimed.append(
            Claimed(
                id=mid,
                token=lease.token,
                attempt=attempt,
                claimed_at=now,
                expires_at=lease.expires_at,
                message=message,
                errors=tuple(errors),
            )
        )
    return claimed


def _fail(
    state: _State, op: Fail, segments: Mapping[str, Segment], now: float, t: Transition
) -> Stale | Cancelled | Failure:
    flight = state.holder(op.id, op.token, now)
    if isinstance(flight, Stale):
        return flight
    flight = msgspec.structs.replace(flight, errors=[*flight.errors, op.error])
    if flight.cancel_requested:
        # The error is kept: it is what the attempt ended with, cancelled or not.
        state.finish(op.id, flight, "cancelled", now, t)
        return CANCELLED
    max_attempts = message_of(segments, op.id).max_attempts
    if not op.retriable or flight.attempt >= max_attempts:
        state.finish(op.id, flight, "dead", now, t)
        return Failure("dead", now)
    visible_at = now + max(0.0, op.delay)
    state.flights[op.id] = msgspec.structs.replace(flight, lease=None, visible_at=visible_at)
    state.count("retried")
    return Failure("retry", visible_at)
