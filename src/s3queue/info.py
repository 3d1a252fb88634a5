"""What the queue hands back to users: leases, message status, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from s3queue.core.records import ErrorRecord

#: A message's status. A dead message leaves "dead" only by a redrive, which sends a
#: copy under a new id (``redriven_to``) and leaves the old id "redriven". A message
#: cancelled while it runs stays "processing" (``cancel_requested``) until its worker
#: stops, then is "cancelled". A message that finished longer ago than the queue's
#: retention (``result_ttl``; ``dead_ttl`` for dead letters) is "expired": its records
#: were collected, and only its id and that status are known.
Status = Literal[
    "pending", "delayed", "processing", "completed", "dead", "redriven", "cancelled", "expired"
]


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
    #: Set when the queue answered an extend, ack, fail or release of this lease with
    #: "the message was cancelled": stop working on it; however the lease ends now,
    #: the message ends cancelled. Written by the event loop, read by any thread.
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """What ``fail`` did: retry at ``visible_at``, dead-lettered, or nothing more
    than end a message that had been cancelled while it ran."""

    status: Literal["retry", "dead", "cancelled"]
    visible_at: float


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What :meth:`~s3queue.Queue.cancel` did to one message.

    - "cancelled": it had not started (pending, delayed, waiting for a retry, or not
      read by any worker yet) and never will;
    - "cancelling": it is running; its worker is told at its next lease renewal, and
      the message ends "cancelled" however that attempt ends;
    - "finished": it had ended already, as ``finished_status`` says; nothing changed;
    - "not_found": there is no such message (or it was purged).
    """

    id: str
    status: Literal["cancelled", "cancelling", "finished", "not_found"]
    #: The same in a sentence, e.g. "already completed".
    detail: str
    #: For "finished": how it ended ("completed", "dead", "redriven", "cancelled"),
    #: None when that cannot be told (its segment was set aside as unreadable).
    finished_status: Status | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


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
    #: A "processing" message someone cancelled: its worker is told to stop.
    cancel_requested: bool = False

    @classmethod
    def expired(cls, mid: str) -> MessageInfo:
        """A message whose records were collected: nothing but its id is known any
        more, so the rest reads as empty, not as values it might have had."""
        return cls(
            id=mid,
            status="expired",
            payload=None,
            attempts=0,
            max_attempts=0,
            priority=0,
            enqueued_at=0.0,
        )

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
    cancelled: int
    retried: int
    recovered: int
    window_segments: int
    cursor_bytes: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts by status; each shard's numbers sum to the totals.

    - ``pending``, ``delayed``, ``processing``: messages in that state now.
    - ``dead``: dead letters stored now (redrive and purge remove them).
    - ``completed``, ``cancelled``, ``retried``, ``recovered``: events since the queue
      was created or last purged: completions, cancellations, failed attempts that
      will be retried, and expired leases taken back from workers that stopped
      answering.
    """

    pending: int
    delayed: int
    processing: int
    completed: int
    dead: int
    cancelled: int = 0
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
            "cancelled": self.cancelled,
            "retried": self.retried,
            "recovered": self.recovered,
            "shards": [{name: getattr(s, name) for name in s.__slots__} for s in self.shards],
            "problems": [{"key": p.key, "what": p.what} for p in self.problems],
        }
