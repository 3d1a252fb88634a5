"""How much a worker claims ahead, and how many jobs it runs at once.

:class:`Pacing` sizes the adaptive prefetch from how fast jobs finish and how long a
claim takes, and takes the autoscaling steps between the concurrency bounds. It is
pure: no I/O, no asyncio, and the time (``sources.monotonic()`` seconds) is passed in,
so tests drive it with numbers. Invariant: the prefetch never exceeds
``MAX_PREFETCH_FACTOR x concurrency`` unless fixed, and the concurrency it returns
stays within ``[min_concurrency, max_concurrency]``, moving one step at most per
cooldown.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: The adaptive prefetch grows to at most this many times the concurrency.
MAX_PREFETCH_FACTOR = 4
#: Finish times remembered to measure the rate at which jobs finish.
FINISHES_KEPT = 64


@dataclass(slots=True, kw_only=True)
class Pacing:
    """The prefetch and autoscaling state of one worker."""

    min_concurrency: int
    max_concurrency: int
    #: Seconds between two autoscaling steps.
    cooldown: float = 5.0
    #: Leases claimed ahead of free slots; None adapts it (see :meth:`prefetch`).
    fixed_prefetch: int | None = None
    #: When the last jobs' handlers returned, and the smoothed claim round trip
    #: (seconds): together they size the adaptive prefetch.
    finish_times: deque[float] = field(default_factory=lambda: deque(maxlen=FINISHES_KEPT))
    claim_rtt: float = 0.0
    #: When the concurrency last moved.
    last_scale: float = 0.0

    def finished(self, now: float) -> None:
        """A job's handler returned at ``now``."""
        self.finish_times.append(now)

    def claimed(self, rtt: float) -> None:
        """A claim that got leases took ``rtt`` seconds."""
        self.claim_rtt = rtt if not self.claim_rtt else (0.8 * self.claim_rtt + 0.2 * rtt)

    def prefetch(self, concurrency: int, now: float) -> int:
        """How many leases to hold beyond the running jobs.

        Fixed when given. Otherwise twice the jobs that finish during one claim round
        trip, up to ``4 x concurrency``: enough leases in hand that no slot waits for
        a claim, and claims large enough that one cursor write carries many messages.
        None before jobs have finished (a worker that just started or was idle takes
        only what it can run, so a small batch is shared by every idle worker) and
        few for long jobs (they would hoard messages that idle workers could take).
        """
        if self.fixed_prefetch is not None:
            return self.fixed_prefetch
        finished = self.finish_times
        if len(finished) < 2 or self.claim_rtt <= 0:
            return 0
        span = max(now - finished[0], 1e-3)
        consumed_per_claim = len(finished) / span * self.claim_rtt
        wanted = math.ceil(2 * consumed_per_claim)
        return min(MAX_PREFETCH_FACTOR * concurrency, wanted)

    def scale(self, concurrency: int, *, busy: bool, waiting: int, running: int, now: float) -> int:
        """The concurrency after a claim round at ``now``: one more when the round
        claimed work (``busy``) and leases are ``waiting`` for a slot, one fewer when
        it claimed nothing and fewer than ``concurrency`` jobs are ``running``; at
        most one step per cooldown, never beyond the bounds."""
        if self.min_concurrency == self.max_concurrency:
            return concurrency
        if now - self.last_scale < self.cooldown:
            return concurrency
        if busy and waiting and concurrency < self.max_concurrency:
            self.last_scale = now
            return concurrency + 1
        if not busy and running < concurrency and concurrency > self.min_concurrency:
            self.last_scale = now
            return concurrency - 1
        return concurrency
