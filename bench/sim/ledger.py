"""What happened to every message, and the invariants checked on every event.

The ledger hears the producers' acknowledged enqueues, each handler's start and end
(with its lease), and the workers' ``completed``/``retry``/``dead`` events, which a
worker emits only after its write landed. It checks, as each arrives (not sampled):

- no message is acked twice (two ``completed``, or ``completed`` and ``dead``);
- no handler starts for a message while another lease on it is still valid by the
  store's clock (a crashed pod's lease counts until it expires);
- no handler starts for a message already acked;

and at the end of the run, with the queue's own word for messages whose last ack
was lost with a crashed pod: every acknowledged enqueue ended completed or dead.
Events of a pod after its crash are ignored: a killed process says nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from s3queue.info import Lease


class InvariantBroken(AssertionError):
    """A guarantee failed; the message says which, for which message, and when."""

    def __init__(self, what: str, message_id: str, at: float) -> None:
        super().__init__(f"{what}: message {message_id} at t={at:.6f}")
        self.what = what
        self.message_id = message_id
        self.at = at


@dataclass
class _Hold:
    pod: str
    lease: Lease
    started: float


@dataclass
class _Message:
    enqueued: float
    acked_at: float | None = None
    first_start: float | None = None
    starts: int = 0
    outcome: str = ""
    holds: list[_Hold] = field(default_factory=list)


@dataclass
class Ledger:
    """See the module docstring. ``now`` is the true simulated time; ``store_time``
    turns it into the store's clock (what lease expiries are written in)."""

    now: Callable[[], float]
    store_time: Callable[[], float]
    messages: dict[str, _Message] = field(default_factory=dict)
    #: Set while measuring: (enqueue-to-start seconds) of first starts, completions.
    measuring: bool = False
    pickups: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    redelivered: int = 0
    crashes: int = 0
    #: When the last outcome was heard (a drain ends there).
    last_outcome: float = 0.0
    #: The first broken invariant (the run stops at it).
    broken: InvariantBroken | None = None

    def _fail(self, what: str, message_id: str) -> None:
        if self.broken is None:
            self.broken = InvariantBroken(what, message_id, self.now())

    def enqueue_called(self) -> float:
        return self.now()

    def enqueued(self, message_id: str, called_at: float) -> None:
        msg = self.messages.get(message_id)
        if msg is None:
            self.messages[message_id] = _Message(enqueued=called_at, acked_at=self.now())
            return
        # A worker started it before the producer heard its write land.
        msg.enqueued, msg.acked_at = called_at, self.now()
        if self.measuring and msg.first_start is not None:
            self.pickups.append(msg.first_start - called_at)

    def started(self, pod: str, message_id: str, lease: Lease) -> None:
        now, msg = self.now(), self.messages.get(message_id)
        if msg is None:  # enqueued, but its producer never heard the answer
            msg = self.messages[message_id] = _Message(enqueued=now)
        if msg.outcome:
            self._fail(
                f"a handler started on {pod} for a message already {msg.outcome}", message_id
            )
        valid = [h for h in msg.holds if h.lease.token != lease.token]
        if any(h.lease.expires_at > self.store_time() for h in valid):
            holder = next(h for h in valid if h.lease.expires_at > self.store_time())
            self._fail(
                f"a handler started on {pod} while {holder.pod}'s lease (expiring "
                f"{holder.lease.expires_at - self.store_time():.3f} s later) was valid",
                message_id,
            )
        msg.holds = [*valid, _Hold(pod, lease, now)]
        msg.starts += 1
        if msg.first_start is None:
            msg.first_start = now
            if self.measuring and msg.acked_at is not None:
                self.pickups.append(now - msg.enqueued)
        else:
            self.redelivered += 1

    def settled(self, pod: str, message_id: str, outcome: str) -> None:
        """The worker's write for this lease landed: ``completed``, ``dead`` or
        ``retry`` (the message will run again)."""
        msg = self.messages.get(message_id)
        if msg is None:  # taken back dead without a start heard (its leases all expired)
            msg = self.messages[message_id] = _Message(enqueued=self.now())
        msg.holds = [h for h in msg.holds if h.pod != pod]
        if outcome == "retry":
            return
        if msg.outcome:
            self._fail(f"acked twice: {msg.outcome}, then {outcome} on {pod}", message_id)
        msg.outcome = outcome
        self.last_outcome = self.now()
        if self.measuring:
            self.completed_in_window += 1

    def unfinished(self) -> list[str]:
        """Acknowledged enqueues with no outcome heard (yet)."""
        return [
            m for m, msg in self.messages.items() if msg.acked_at is not None and not msg.outcome
        ]

    def pickup_percentiles(self) -> tuple[float, float]:
        """p50 and p99 of enqueue-to-start seconds (first starts, measured window)."""
        if len(self.pickups) < 2:
            return (self.pickups[0], self.pickups[0]) if self.pickups else (0.0, 0.0)
        cuts = statistics.quantiles(self.pickups, n=100, method="inclusive")
        return cuts[49], cuts[98]
