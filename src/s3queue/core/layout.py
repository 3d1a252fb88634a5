"""Every object key of a queue, in one place.

Invariant: numbers in keys are fixed-width and zero-padded, so an ascending LIST is
the order the queue needs (segments by sequence, timer buckets by due time).

A queue named ``emails`` under a store keeps::

    emails/queue.json                         settings, created once
    emails/shards/0003/log/000000000042       immutable segment 42 of shard 3
    emails/shards/0003/high/000000000007      segment 7 of the shard's express lane
                                              (messages with priority > 0)
    emails/shards/0003/timers/0001732480020/000007   delayed segment, due bucket
    emails/shards/0003/cursor                 consumer state of shard 3 (CAS only)
    emails/dead/<message id>                  dead letter with its error history
    emails/results/0003/L000000000042/000007  a handler's return value, or how a message
                                              ended when that needs saying (keys sort by
                                              segment; queues made before 0.x keep
                                              results/<message id>)
    emails/redriven/<message id>              where a redriven dead letter went
    emails/dedup/<sha256 of the key>          dedup marker
    emails/blobs/p-<32 hex>                   a payload over the blob threshold,
                                              referenced by one segment's message
    emails/blobs/r-<message id>-<16 hex>      a result over the blob threshold,
                                              referenced by the message's Ack,
                                              cursor outcome and result record
    emails/probe/<random>                     conditional-write probe, deleted after
    emails/quarantine/0003-L42                why segment L42 of shard 3 was set aside
    emails/quarantine/0003-L42.data           its bytes as they were found (also
                                              0003-cursor.data, queue.json.data)
    emails/clock                              rewritten to read the store's time
    emails/wake/any, emails/wake/high         rewritten to wake idle workers (wake.py)
    emails/sweeper                            the sweeper's lease and what it collected
                                              (retention.py; CAS only)
    emails/blobs/p-<random>                   a payload too large for its segment
    emails/blobs/r-<message id>-<random>      a result too large for its record
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Literal

from s3queue import sources
from s3queue.errors import ConfigurationError

log = logging.getLogger("s3queue.layout")

QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,79}$")
QUEUE_NAME_RULE = (
    "1 to 80 characters: letters, digits, '_' and '-', starting with a letter or digit"
)


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"invalid queue name {name!r}",
            suggestion=f"queue names are {QUEUE_NAME_RULE}",
        )
    return name


def queue_prefix(queue: str) -> str:
    return f"{queue}/"


def settings_key(queue: str) -> str:
    return f"{queue}/queue.json"


def shards_prefix(queue: str) -> str:
    return f"{queue}/shards/"


def shard_prefix(queue: str, shard: int) -> str:
    return f"{shards_prefix(queue)}{shard:04d}"


def cursor_key(queue: str, shard: int) -> str:
    return f"{shard_prefix(queue, shard)}/cursor"


def log_prefix(queue: str, shard: int) -> str:
    return f"{shard_prefix(queue, shard)}/log/"


#: Timer buckets: delays longer than TIMER_THRESHOLD seconds go into buckets this
#: many seconds wide, sealed TIMER_SEAL_MARGIN seconds after they end (the tolerance
#: for producers' clock skew).
TIMER_BUCKET = 60
TIMER_THRESHOLD = 120.0
TIMER_SEAL_MARGIN = 300.0

#: Widths of the zero-padded numbers in keys.
LOG_DIGITS = 12
TIMER_BUCKET_DIGITS = 13
TIMER_SEQ_DIGITS = 6


def log_key(queue: str, shard: int, seq: int) -> str:
    return f"{log_prefix(queue, shard)}{seq:0{LOG_DIGITS}d}"


def high_prefix(queue: str, shard: int) -> str:
    return f"{shard_prefix(queue, shard)}/high/"


def high_key(queue: str, shard: int, seq: int) -> str:
    return f"{high_prefix(queue, shard)}{seq:0{LOG_DIGITS}d}"


def timer_bucket_prefix(queue: str, shard: int, bucket: int) -> str:
    return f"{timers_prefix(queue, shard)}{bucket:0{TIMER_BUCKET_DIGITS}d}/"


def timer_key(queue: str, shard: int, bucket: int, seq: int) -> str:
    return f"{timer_bucket_prefix(queue, shard, bucket)}{seq:0{TIMER_SEQ_DIGITS}d}"


def lane_prefix(queue: str, shard: int, bucket: int) -> str:
    """Where the segments of one lane are listed: the log, the express lane, or one
    timer bucket (``bucket`` as in :attr:`SegmentRef.bucket`)."""
    if bucket == HIGH_LANE:
        return high_prefix(queue, shard)
    if bucket == LOG_LANE:
        return log_prefix(queue, shard)
    return timer_bucket_prefix(queue, shard, bucket)


def dead_prefix(queue: str) -> str:
    return f"{queue}/dead/"


def dead_key(queue: str, message_id: str) -> str:
    return f"{dead_prefix(queue)}{message_id}"


def dead_letter_id(queue: str, key: str) -> str:
    """The message id of a dead letter's key (as listed under :func:`dead_prefix`)."""
    return key[len(dead_prefix(queue)) :]


def redriven_prefix(queue: str) -> str:
    return f"{queue}/redriven/"


def redriven_key(queue: str, message_id: str) -> str:
    return f"{redriven_prefix(queue)}{message_id}"


def letter_id(queue: str, key: str) -> str | None:
    """The message id of a dead letter's key; None for any other key."""
    rest = dead_letter_id(queue, key) if key.startswith(dead_prefix(queue)) else ""
    return rest if parse_id(rest) is not None else None


def redriven_id(queue: str, key: str) -> str | None:
    """The message id of a redrive record's key; None for any other key."""
    prefix = redriven_prefix(queue)
    rest = key[len(prefix) :] if key.startswith(prefix) else ""
    return rest if parse_id(rest) is not None else None


def result_key(queue: str, message_id: str, *, by_segment: bool = True) -> str:
    """Where a message's result record is: under its shard and segment, so that a
    listing is in segment order and retention can stop where collection stops (or by
    id alone, in queues created before: ``by_segment`` from their settings)."""
    if not by_segment:
        return f"{results_prefix(queue)}{message_id}"
    address = parse_message_id(message_id)
    return (
        f"{results_prefix(queue)}{address.shard:04d}/"
        f"{_sortable(address.segment)}/{address.index:06d}"
    )


def results_prefix(queue: str) -> str:
    return f"{queue}/results/"


def lane_results_prefix(queue: str, shard: int, lane: str) -> str:
    """The results of one lane of a shard ("log", "high" or "timers"), in segment order."""
    letter = {"log": "L", "high": "H", "timers": "T"}[lane]
    return f"{results_prefix(queue)}{shard:04d}/{letter}"


def _sortable(ref: SegmentRef) -> str:
    if ref.is_timer:
        return f"T{ref.bucket:0{TIMER_BUCKET_DIGITS}d}.{ref.seq:0{TIMER_SEQ_DIGITS}d}"
    return f"{'H' if ref.is_high else 'L'}{ref.seq:0{LOG_DIGITS}d}"


_RESULT_BY_SEGMENT = re.compile(r"(\d{4})/(?:([LH])(\d{12})|T(\d{13})\.(\d{6}))/(\d{6})", re.ASCII)


def result_id(queue: str, key: str) -> str | None:
    """The message id of a result record's key (either layout); None for any other key."""
    prefix = results_prefix(queue)
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    match = _RESULT_BY_SEGMENT.fullmatch(rest)
    if match is None:
        return rest if parse_id(rest) is not None else None
    shard, lane, seq, bucket, timer_seq, index = match.groups()
    if lane is None:
        ref = SegmentRef.timer(int(bucket), int(timer_seq))
    else:
        ref = SegmentRef.high(int(seq)) if lane == "H" else SegmentRef.log(int(seq))
    return message_id(int(shard), ref, int(index))


#: No segment younger than this (by the store's clock) is deleted, and a producer
#: trusts the next free sequence number it remembers for a lane only half as long
#: after its last write there (it re-reads the cursor after that): a number freed
#: by a deletion can never be reused behind the cursor (see sweep.py).
SEGMENT_MIN_AGE = 60.0


def lane_segments_prefix(queue: str, shard: int, lane: str) -> str:
    """Where the segments of one lane of a shard ("log", "high" or "timers": every
    timer bucket) are listed."""
    if lane == "timers":
        return timers_prefix(queue, shard)
    return lane_prefix(queue, shard, HIGH_LANE if lane == "high" else LOG_LANE)


def sweeper_key(queue: str) -> str:
    return f"{queue}/sweeper"


#: A worker id as it may appear in a key: what ``hostname-pid-hex`` and most
#: user-chosen ids are made of. Anything else is refused when the worker starts.
WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$", re.ASCII)


def check_worker_id(worker_id: str) -> str:
    if not isinstance(worker_id, str) or not WORKER_ID.fullmatch(worker_id):
        raise ConfigurationError(
            f"invalid worker id {worker_id!r}: it names the worker's heartbeat object",
            suggestion="use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return worker_id


def workers_prefix(queue: str) -> str:
    return f"{queue}/workers/"


def worker_key(queue: str, worker_id: str) -> str:
    return f"{workers_prefix(queue)}{worker_id}"


def worker_of(queue: str, key: str) -> str | None:
    """The worker id a heartbeat key names; None (with a warning) for another key."""
    prefix = workers_prefix(queue)
    worker_id = key[len(prefix) :] if key.startswith(prefix) else ""
    if not WORKER_ID.fullmatch(worker_id):
        foreign(key)
        return None
    return worker_id


def cluster_key(queue: str) -> str:
    """The coordinator's lease and the cluster snapshot, one object (see registry.py)."""
    return f"{queue}/cluster"


def dedup_key(queue: str, key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{queue}/dedup/{digest}"


def dedup_prefix(queue: str) -> str:
    return f"{queue}/dedup/"


def blobs_prefix(queue: str) -> str:
    return f"{queue}/blobs/"


#: Seconds of the payload-blob collection contract. A producer never writes a segment
#: that references a payload blob whose PUT started more than BLOB_GRACE / 2 seconds
#: earlier by its monotonic clock (it writes the blob again under a new key first),
#: so a collector may delete a payload blob older than the oldest segment still in
#: the queue minus BLOB_GRACE: no segment written later can reference it. A result
#: blob goes when its message's segment has been collected. Payload blobs are
#: therefore referenced by segments only: a dead letter holds its payload inline.
BLOB_GRACE = 3600.0


def payload_blob_key(queue: str) -> str:
    """A fresh key for a payload too large for its segment (128 random bits)."""
    return f"{blobs_prefix(queue)}p-{sources.token_hex(16)}"


def result_blob_key(queue: str, message_id: str) -> str:
    """A fresh key for a result of ``message_id`` too large for its records (random,
    so that the results of two attempts never share a key)."""
    return f"{blobs_prefix(queue)}r-{message_id}-{sources.token_hex(8)}"


def link_key(queue: str, parent_queue: str, parent_id: str) -> str:
    """The link from a finished message (a chain step, in ``parent_queue``) to the
    message that follows it in ``queue``."""
    return f"{links_prefix(queue)}{parent_queue}/{parent_id}"


def links_prefix(queue: str) -> str:
    return f"{queue}/links/"


def quarantine_prefix(queue: str) -> str:
    return f"{queue}/quarantine/"


def quarantine_key(queue: str, shard: int, ref: SegmentRef) -> str:
    return f"{quarantine_prefix(queue)}{shard:04d}-{ref}"


#: Ends the key of every copy of bytes set aside (beside a segment's record, a
#: cursor's or the settings'): a copy, not a record.
COPY_SUFFIX = ".data"


def quarantine_copy_key(queue: str, shard: int, ref: SegmentRef) -> str:
    """Where the bytes of a segment set aside are kept, beside its record."""
    return f"{quarantine_key(queue, shard, ref)}{COPY_SUFFIX}"


def is_quarantine_copy(key: str) -> bool:
    return key.endswith(COPY_SUFFIX)


def quarantined_cursor_key(queue: str, shard: int) -> str:
    """Where ``s3queue doctor --fix`` keeps an unreadable cursor it replaced."""
    return f"{quarantine_prefix(queue)}{shard:04d}-cursor{COPY_SUFFIX}"


def quarantined_settings_key(queue: str) -> str:
    return f"{quarantine_prefix(queue)}queue.json{COPY_SUFFIX}"


def clock_key(queue: str) -> str:
    return f"{queue}/clock"


def wake_key(queue: str, *, high: bool = False) -> str:
    return f"{queue}/wake/{'high' if high else 'any'}"


def probe_key(queue: str, token: str) -> str:
    return f"{queue}/probe/{token}"


# --- parsing keys back ------------------------------------------------------------
#
# Listings may hold keys this code did not write (a file dropped into the queue's
# directory, a copy made by a tool). They are not segments: they are skipped, with
# one warning per key, never parsed into a crash.

_warned: set[str] = set()
#: A segment key after ``<queue>/`` (matched whole): shard, then a log lane and
#: seq, or a timer bucket and seq. ASCII digits only, as written: ``\d`` alone would
#: take any script's digits, which int() reads into a number naming another key.
_SEGMENT = re.compile(r"shards/(\d{4})/(?:(log|high)/(\d{12})|timers/(\d{13})/(\d{6}))", re.ASCII)
_SHARD = re.compile(r"(\d{4})", re.ASCII)


def foreign(key: str) -> None:
    """Note a key that is not one of ours (warned once per key and process)."""
    if key not in _warned and len(_warned) < 10_000:
        _warned.add(key)
        log.warning("ignoring %s: not an object s3queue wrote (move it out of the queue)", key)


def segment_of(queue: str, key: str) -> tuple[int, SegmentRef] | None:
    """The shard and segment a key of ``queue`` names (a log, express-lane or timer
    segment; a timer bucket's seal too); None for any other key."""
    prefix = queue_prefix(queue)
    match = _SEGMENT.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
    if match is None:
        return None
    shard, lane, seq, bucket, timer_seq = match.groups()
    if lane is None:
        return int(shard), SegmentRef.timer(int(bucket), int(timer_seq))
    if lane == "high":
        return int(shard), SegmentRef.high(int(seq))
    return int(shard), SegmentRef.log(int(seq))


def parse_segment_key(queue: str, shard: int, key: str) -> SegmentRef | None:
    """The segment a key listed under one of ``shard``'s prefixes names; None, with
    a warning, for a key s3queue did not write."""
    found = segment_of(queue, key)
    if found is None or found[0] != shard:
        foreign(key)
        return None
    return found[1]


def shard_of(queue: str, key: str) -> int | None:
    """The shard number that starts a key under :func:`shards_prefix`, if any."""
    prefix = shards_prefix(queue)
    match = _SHARD.match(key[len(prefix) :]) if key.startswith(prefix) else None
    return None if match is None else int(match[1])


def queue_of(key: str) -> str | None:
    """The queue a key belongs to (its first path segment); None for a key outside
    any queue's prefix."""
    name, slash, _ = key.partition("/")
    return name if slash else None


_ID = r"\d{1,4}-(?:[LH]\d{1,12}|T\d{1,13}\.\d{1,6})-\d{1,6}"
_BLOB = re.compile(rf"blobs/(?:p-[0-9a-f]{{32}}|r-({_ID})-[0-9a-f]{{16}})", re.ASCII)
_KINDS = [
    ("settings", re.compile(r"^queue\.json$", re.ASCII)),
    ("cursor", re.compile(r"^shards/\d{4}/cursor$", re.ASCII)),
    ("log", re.compile(r"^shards/\d{4}/log/\d{12}$", re.ASCII)),
    ("high", re.compile(r"^shards/\d{4}/high/\d{12}$", re.ASCII)),
    ("timer", re.compile(r"^shards/\d{4}/timers/\d{13}/\d{6}$", re.ASCII)),
    ("dead", re.compile(rf"^dead/{_ID}$", re.ASCII)),
    ("result", re.compile(rf"^results/{_ID}$", re.ASCII)),
    ("result", re.compile(r"^results/\d{4}/(?:[LH]\d{12}|T\d{13}\.\d{6})/\d{6}$", re.ASCII)),
    ("sweeper", re.compile(r"^sweeper$", re.ASCII)),
    ("cluster", re.compile(r"^cluster$", re.ASCII)),
    ("worker", re.compile(r"^workers/[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$", re.ASCII)),
    ("redriven", re.compile(rf"^redriven/{_ID}$", re.ASCII)),
    ("dedup", re.compile(r"^dedup/[0-9a-f]{64}$", re.ASCII)),
    ("blob", re.compile(rf"^{_BLOB.pattern}$", re.ASCII)),
    ("link", re.compile(rf"^links/[A-Za-z0-9][A-Za-z0-9_\-]{{0,79}}/{_ID}$", re.ASCII)),
    (
        "quarantine",
        re.compile(
            r"^quarantine/(?:\d{4}-(?:[LH]\d+|T\d+\.\d+)(?:\.data)?"
            r"|\d{4}-cursor\.data|queue\.json\.data)$",
            re.ASCII,
        ),
    ),
    ("probe", re.compile(r"^probe/[0-9a-f]+$", re.ASCII)),
    ("clock", re.compile(r"^clock$", re.ASCII)),
    ("wake", re.compile(r"^wake/(?:any|high)$", re.ASCII)),
]


def classify(queue: str, key: str) -> str | None:
    """What kind of object ``key`` is in ``queue`` ("cursor", "log", "dead"...), or
    None when s3queue never writes such a key (matched whole, ASCII digits only, as
    :func:`segment_of`)."""
    prefix = queue_prefix(queue)
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    return next((kind for kind, pattern in _KINDS if pattern.fullmatch(rest)), None)


def blob_of(queue: str, key: str) -> tuple[Literal["payload", "result"], str | None] | None:
    """What a blob key of ``queue`` holds: ("payload", None), or ("result", the id
    of the message whose result it is); None for any other key."""
    prefix = queue_prefix(queue)
    match = _BLOB.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
    if match is None:
        return None
    return ("payload", None) if match[1] is None else ("result", match[1])


def timers_prefix(queue: str, shard: int) -> str:
    return f"{shard_prefix(queue, shard)}/timers/"


# --- message ids -----------------------------------------------------------------
#
# A message id names where the message was written: shard, segment, index. Then
# ``get(id)`` costs one cursor read, never a search. A segment is a log segment
# ("L<seq>"), an express-lane segment ("H<seq>") or a timer segment ("T<bucket>.<seq>").


#: SegmentRef.bucket of the two log lanes; timer buckets are unix seconds (>= 0).
#: The express lane sorts first: at equal priority its segments come first.
HIGH_LANE = -2
LOG_LANE = -1


@dataclass(frozen=True, slots=True, order=True)
class SegmentRef:
    """Which immutable segment: a sequence number in one of a shard's two logs (the
    normal lane, or the express lane of priority > 0), or a timer bucket and seq."""

    bucket: int  # HIGH_LANE, LOG_LANE, or the timer bucket (unix seconds)
    seq: int

    @property
    def is_timer(self) -> bool:
        return self.bucket >= 0

    @property
    def is_high(self) -> bool:
        return self.bucket == HIGH_LANE

    def __str__(self) -> str:
        if self.is_timer:
            return f"T{self.bucket}.{self.seq}"
        return f"H{self.seq}" if self.is_high else f"L{self.seq}"

    def key(self, queue: str, shard: int) -> str:
        if self.is_timer:
            return timer_key(queue, shard, self.bucket, self.seq)
        if self.is_high:
            return high_key(queue, shard, self.seq)
        return log_key(queue, shard, self.seq)

    @classmethod
    def log(cls, seq: int) -> SegmentRef:
        return cls(LOG_LANE, seq)

    @classmethod
    def high(cls, seq: int) -> SegmentRef:
        return cls(HIGH_LANE, seq)

    @classmethod
    def timer(cls, bucket: int, seq: int) -> SegmentRef:
        return cls(bucket, seq)

    @classmethod
    def parse(cls, text: str) -> SegmentRef:
        return _parse_ref(text)


@functools.lru_cache(maxsize=1 << 14)
def _parse_ref(text: str) -> SegmentRef:
    # Cached: refs are parsed on every claim for every segment of the window.
    kind = text[:1]
    if kind == "L":
        return SegmentRef.log(int(text[1:]))
    if kind == "H":
        return SegmentRef.high(int(text[1:]))
    if kind == "T":
        bucket, seq = text[1:].split(".", 1)
        return SegmentRef.timer(int(bucket), int(seq))
    raise ValueError(text)


_MESSAGE_ID = re.compile(r"^(\d{1,4})-([LH]\d{1,12}|T\d{1,13}\.\d{1,6})-(\d{1,6})$")


@dataclass(frozen=True, slots=True)
class MessageAddress:
    shard: int
    segment: SegmentRef
    index: int

    def __str__(self) -> str:
        return f"{self.shard}-{self.segment}-{self.index}"


def message_id(shard: int, segment: SegmentRef, index: int) -> str:
    return str(MessageAddress(shard, segment, index))


def parse_id(text: str) -> MessageAddress | None:
    """The address a message id names, or None when ``text`` is not one."""
    return _parse_message_id(text) if isinstance(text, str) else None


def parse_message_id(text: str) -> MessageAddress:
    address = _parse_message_id(text) if isinstance(text, str) else None
    if address is None:
        raise ConfigurationError(
            f"invalid message id {text!r}",
            suggestion="message ids look like 3-L42-7 (shard, segment, index), as enqueue returned",
        )
    return address


@functools.lru_cache(maxsize=1 << 16)
def _parse_message_id(text: str) -> MessageAddress | None:
    # Cached: a busy worker parses each id on claim, ack, commit and finish;
    # addresses are immutable, so sharing them is safe.
    match = _MESSAGE_ID.match(text)
    if match is None:
        return None
    return MessageAddress(int(match[1]), SegmentRef.parse(match[2]), int(match[3]))
