"""Every object key of a queue, in one place.

Invariant: numbers in keys are fixed-width and zero-padded, so an ascending LIST is
the order the queue needs (segments by sequence, timer buckets by due time).

A queue named ``emails`` under a store keeps::

    emails/queue.json                         settings, created once
    emails/shards/0003/log/000000000042       immutable segment 42 of shard 3
    emails/shards/0003/timers/0001732480020/000007   delayed segment, due bucket
    emails/shards/0003/cursor                 consumer state of shard 3 (CAS only)
    emails/dead/<message id>                  dead letter with its error history
    emails/results/<message id>               a handler's return value
    emails/redriven/<message id>              where a redriven dead letter went
    emails/dedup/<sha256 of the key>          dedup marker
    emails/probe/<random>                     conditional-write probe, deleted after
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from s3queue.errors import ConfigurationError

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


def settings_key(queue: str) -> str:
    return f"{queue}/queue.json"


def shard_prefix(queue: str, shard: int) -> str:
    return f"{queue}/shards/{shard:04d}"


def cursor_key(queue: str, shard: int) -> str:
    return f"{shard_prefix(queue, shard)}/cursor"


def log_prefix(queue: str, shard: int) -> str:
    return f"{shard_prefix(queue, shard)}/log/"


def log_key(queue: str, shard: int, seq: int) -> str:
    return f"{log_prefix(queue, shard)}{seq:012d}"


def timer_key(queue: str, shard: int, bucket: int, seq: int) -> str:
    return f"{shard_prefix(queue, shard)}/timers/{bucket:013d}/{seq:06d}"


def dead_prefix(queue: str) -> str:
    return f"{queue}/dead/"


def dead_key(queue: str, message_id: str) -> str:
    return f"{dead_prefix(queue)}{message_id}"


def redriven_prefix(queue: str) -> str:
    return f"{queue}/redriven/"


def redriven_key(queue: str, message_id: str) -> str:
    return f"{redriven_prefix(queue)}{message_id}"


def result_key(queue: str, message_id: str) -> str:
    return f"{queue}/results/{message_id}"


def results_prefix(queue: str) -> str:
    return f"{queue}/results/"


def dedup_key(queue: str, key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{queue}/dedup/{digest}"


def dedup_prefix(queue: str) -> str:
    return f"{queue}/dedup/"


def probe_key(queue: str, token: str) -> str:
    return f"{queue}/probe/{token}"


# --- message ids -----------------------------------------------------------------
#
# A message id names where the message was written: shard, segment, index. Then
# ``get(id)`` costs one cursor read, never a search. A segment is either a log
# segment ("L<seq>") or a timer segment ("T<bucket>.<seq>").


@dataclass(frozen=True, slots=True, order=True)
class SegmentRef:
    """Which immutable segment: a log sequence number, or a timer bucket and seq."""

    bucket: int  # -1 for the log, else the timer bucket (unix seconds)
    seq: int

    @property
    def is_timer(self) -> bool:
        return self.bucket >= 0

    def __str__(self) -> str:
        return f"T{self.bucket}.{self.seq}" if self.is_timer else f"L{self.seq}"

    def key(self, queue: str, shard: int) -> str:
        if self.is_timer:
            return timer_key(queue, shard, self.bucket, self.seq)
        return log_key(queue, shard, self.seq)

    @classmethod
    def log(cls, seq: int) -> SegmentRef:
        return cls(-1, seq)

    @classmethod
    def timer(cls, bucket: int, seq: int) -> SegmentRef:
        return cls(bucket, seq)

    @classmethod
    def parse(cls, text: str) -> SegmentRef:
        if text.startswith("L"):
            return cls.log(int(text[1:]))
        if text.startswith("T"):
            bucket, seq = text[1:].split(".", 1)
            return cls.timer(int(bucket), int(seq))
        raise ValueError(text)


_MESSAGE_ID = re.compile(r"^(\d{1,4})-(L\d{1,12}|T\d{1,13}\.\d{1,6})-(\d{1,6})$")


@dataclass(frozen=True, slots=True)
class MessageAddress:
    shard: int
    segment: SegmentRef
    index: int

    def __str__(self) -> str:
        return f"{self.shard}-{self.segment}-{self.index}"


def message_id(shard: int, segment: SegmentRef, index: int) -> str:
    return str(MessageAddress(shard, segment, index))


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
