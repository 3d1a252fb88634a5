"""What happened to every message, and the invariants checked on every event.

The ledger hears the producers' acknowledged enqueues, each handler's start (with
the lease the store's cursor holds for the message at that instant, read straight
from the simulated bucket), and the workers' ``completed``/``retry``/``dead``
events, which a worker emits only after its write landed. It checks, as each
arrives (not sampled):

- no handler starts unless the store holds the message leased to that very token,
  unexpired by the store's clock: so never while another lease on it is valid, and
  never for a message already acked (even when the pod that acked it crashed before
  it heard the answer);
- no message is acked twice (two ``completed``, or ``completed`` and ``dead``);

and at the end of the run, with the queue's own word for messages whose last ack
was lost with a crashed pod: every acknowledged enqueue ended completed or dead.
Events of a pod after its crash are ignored: a killed process says nothing.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from s3queue.core.cursor import Lease


class InvariantBroken(AssertionError):
    """A guarantee failed; the message says which, for which message, and when."""

    def __init__(self, what: str, message_id: str, at: float) -> None:
        super().__init__(f"{what}: message {message_id} at t={at:.6f}")
        self.what = what
        self.message_id = message_id
        self.at = at


@dataclass
class _Message:
    enqueued: float
    acked_at: float | None = None
    first_start: float | None = None
    outcome: str = ""


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
    #: Outcomes (completed or dead) heard in each second of simulated time.
    finished_per_second: Counter[int] = field(default_factory=Counter)
    #: The first broken invariant (the run stops at it).
    broken: InvariantBroken | None = None

    def _fail(self, what: str, message_id: str) -> None:
        if self.broken is None:
            self.broken = InvariantBroken(what, message_id, self.now())

    def enqueued(self, message_id: str, called_at: float) -> None:
        msg = self.messages.get(message_id)
        if msg is None:
            self.messages[message_id] = _Message(enqueued=called_at, acked_at=self.now())
            return
        # A worker started it before the producer heard its write land.
        msg.enqueued, msg.acked_at = called_at, self.now()
        if self.measuring and msg.first_start is not None:
            self.pickups.append(msg.first_start - called_at)

    def started(self, pod: str, message_id: str, token: str, stored: Lease | None) -> None:
        """A handler of ``pod`` started on lease ``token``; ``stored`` is the lease
        the store's cursor holds for the message now (None: none)."""
        now, msg = self.now(), self.messages.get(message_id)
        if msg is None:  # enqueued, but its producer has not heard the answer yet
            msg = self.messages[message_id] = _Message(enqueued=now)
        if msg.outcome:
            self._fail(
                f"a handler started on {pod} for a message already {msg.outcome}", message_id
            )
        elif stored is None or stored.token != token:
            holder = "no lease" if stored is None else f"{stored.owner}'s lease"
            self._fail(f"a handler started on {pod} while the store held {holder}", message_id)
        elif stored.expires_at <= self.store_time():
            late = self.store_time() - stored.expires_at
            self._fail(
                f"a handler started on {pod} {late:.3f} s after its lease expired", message_id
            )
        if msg.first_start is None:
            msg.first_start = now
            if self.measuring and msg.acked_at is not None:
                self.pickups.append(now - msg.enqueued)
        else:
            self.redelivered += 1

    def settled(self, pod: str, message_id: str, outcome: str) -> None:
        """The worker's write landed: ``completed``, ``dead`` or ``retry`` (the
        message will run again)."""
        msg = self.messages.get(message_id)
        if msg is None:  # taken back dead without a start heard (its leases all expired)
            msg = self.messages[message_id] = _Message(enqueued=self.now())
        if msg.outcome:
            self._fail(f"acked twice: {outcome} on {pod} after {msg.outcome}", message_id)
        if outcome == "retry":
            return
        msg.outcome = outcome
        self.last_outcome = self.now()
        self.finished_per_second[int(self.last_outcome)] += 1
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


@dataclass
class ClusterWatch:
    """The cluster's own promises, measured on true time: a new coordinator after
    each one killed (failover), a crashed pod's shards owned again (adoption), and
    one coordinator at a time (epochs of promotions only go up)."""

    now: Callable[[], float]
    #: (true time, pod, epoch) of every promotion.
    promotions: list[tuple[float, str, int]] = field(default_factory=list)
    #: True times at which the coordinator was killed.
    kills: list[float] = field(default_factory=list)
    #: (true time of a crash, the shards the crashed pod owned) not yet adopted.
    orphans: list[tuple[float, frozenset[int]]] = field(default_factory=list)
    adoptions: list[float] = field(default_factory=list)
    broken: str | None = None

    def promoted(self, pod: str, epoch: int) -> None:
        last = self.promotions[-1][2] if self.promotions else 0
        if epoch <= last and self.broken is None:
            self.broken = f"{pod} was promoted with epoch {epoch}, not above {last}"
        self.promotions.append((self.now(), pod, epoch))

    def crashed(self, owned: frozenset[int] | None) -> None:
        if owned:
            self.orphans.append((self.now(), owned))

    def tick(self, owned_now: set[int]) -> None:
        """``owned_now``: the shards live pods own at this instant."""
        left = []
        for since, shards in self.orphans:
            if shards <= owned_now:
                self.adoptions.append(self.now() - since)
            else:
                left.append((since, shards))
        self.orphans = left

    def failovers(self) -> list[float | None]:
        """Seconds from each kill to the next promotion (None: none came)."""
        out: list[float | None] = []
        for kill in self.kills:
            after = [at for at, _, _ in self.promotions if at > kill]
            out.append(min(after) - kill if after else None)
        return out
