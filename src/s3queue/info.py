"""What the queue hands back to users: leases, message status, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from s3queue.core.records import ErrorRecord

#: A message's status. A dead message leaves "dead" only by a redrive, which sends a
#: copy under a new id (``redriven_to``) and leaves the old id "redriven".
Status = Literal["pending", "delayed", "processing", "completed", "dead", "redriven"]


@dataclass(slots=True)
class Lease:
    """A claimed message. Only this lease's token may ack, fail or extend it, and
    only until ``expires_at`` (after that: :class:`~s3queue.errors.LeaseLost`)."""

    id: str
    payload: Any
    attempt: int
    max_attempts: int
    token: str
    owner: str
    claimed_at: float
    expires_at: float
    enqueued_at: float
    priority: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)
    #: The name of the queue that leased it.
    queue: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """What ``fail`` did: retry at ``visible_at``, or dead-lettered."""

    status: Literal["retry", "dead"]
    visible_at: float


@dataclass(frozen=True, slots=True)
class MessageInfo:
    id: str
    status: Status
    payload: Any
    attempts: int
    max_attempts: int
    priority: int
    enqueued_at: float
    visible_at: float | None = None
    result: Any = None
    errors: list[ErrorRecord] = field(default_factory=list)
    owner: str | None = None
    lease_expires_at: float | None = None
    progress: Any = None
    finished_at: float | None = None
    dedup_key: str | None = None
    #: For status "redriven": the id of the copy that went back to the queue.
    redriven_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["errors"] = [{f: getattr(e, f) for f in e.__struct_fields__} for e in self.errors]
        return out


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the bucket that is not as it should be (``s3queue doctor`` says
    what to do about it)."""

    key: str
    what: str


@dataclass(frozen=True, slots=True)
class ShardStats:
    shard: int
    pending: int
    delayed: int
    processing: int
    completed: int
    dead: int
    retried: int
    recovered: int
    window_segments: int
    cursor_bytes: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts by status; each shard's numbers sum to the totals.

    - ``pending``, ``delayed``, ``processing``: messages in that state now.
    - ``dead``: dead letters stored now (redrive and purge remove them).
    - ``completed``, ``retried``, ``recovered``: events since the queue was created or
      last purged: completions, failed attempts that will be retried, and expired
      leases taken back from workers that stopped answering.
    """

    pending: int
    delayed: int
    processing: int
    completed: int
    dead: int
    retried: int = 0
    recovered: int = 0
    shards: list[ShardStats] = field(default_factory=list)
    #: Objects that could not be read, and segments set aside (quarantined): the
    #: counts above leave out what they held.
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "delayed": self.delayed,
            "processing": self.processing,
            "completed": self.completed,
            "dead": self.dead,
            "retried": self.retried,
            "recovered": self.recovered,
            "shards": [{name: getattr(s, name) for name in s.__slots__} for s in self.shards],
            "problems": [{"key": p.key, "what": p.what} for p in self.problems],
        }
