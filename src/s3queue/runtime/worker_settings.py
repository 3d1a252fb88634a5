"""How a :class:`~s3queue.runtime.worker.Worker` is tuned, in three small frozen settings.

``Leases`` (how long a claimed job holds its message, may run and may finish at
shutdown, and how its failures are retried), ``Polling`` (idle polling and the leases
claimed ahead) and ``Scaling`` (the autoscaling bounds). Each has the defaults and
checks its numbers when built, with the ranges of :mod:`s3queue.limits` and errors
naming each field as the caller spelled it. Invariant: a settings object that exists
holds only checked values, so a Worker never starts from a number out of range.

Not ``settings.py``: in s3queue "settings" already means a queue's stored
``queue.json`` (``records.QueueSettings``, ``Queue.settings``).
"""

from __future__ import annotations

from dataclasses import dataclass

from s3queue import limits
from s3queue.backoff import Backoff
from s3queue.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Leases:
    """How long a claimed job holds its message and what happens when it fails.

    A lease lasts ``visibility_timeout`` seconds and is extended while the job runs;
    ``job_timeout`` cancels an attempt that runs longer (None: no limit); on shutdown
    running jobs get ``shutdown_timeout`` seconds before their leases are released. A
    failed attempt is retried after ``backoff`` (None: the queue's), at most
    ``max_attempts`` times (None: the message's own limit; otherwise the lower).
    """

    visibility_timeout: float = 30.0
    job_timeout: float | None = None
    shutdown_timeout: float = 30.0
    max_attempts: int | None = None
    backoff: Backoff | None = None

    def __post_init__(self) -> None:
        # Stored as checked: a float field holds a float even when given an int.
        _set(
            self,
            "visibility_timeout",
            limits.VISIBILITY_TIMEOUT.check(self.visibility_timeout, "visibility_timeout"),
        )
        _set(self, "max_attempts", limits.MAX_ATTEMPTS.optional(self.max_attempts, "max_attempts"))
        _set(self, "job_timeout", limits.JOB_TIMEOUT.optional(self.job_timeout, "job_timeout"))
        _set(
            self,
            "shutdown_timeout",
            limits.SHUTDOWN_TIMEOUT.check(self.shutdown_timeout, "shutdown_timeout"),
        )


@dataclass(frozen=True, slots=True)
class Polling:
    """How the worker reads the bucket besides claiming.

    With nothing to claim, it makes one storage request per ``poll_interval`` seconds
    on average, fewer the longer it stays idle when other workers serve the queue: a
    cluster's idle workers share the polling, so that together they check the queue
    at least once per ``poll_interval`` and each of its shards at least once per
    ``max_poll_interval`` (``s3queue.runtime.cluster``). Every
    ``heartbeat_interval`` seconds it rewrites its heartbeat object (a PUT per queue
    served) and reads the cluster object (a GET); a worker not heard from for three
    intervals is dead, and its shards go to the others. ``prefetch`` leases are held
    beyond the running jobs; None adapts it to how fast jobs finish (see
    :class:`s3queue.runtime.pacing.Pacing`). Every ``sweep_interval`` seconds
    (jittered) the queue's coordinator sweeps it (collects what retention says is
    over, :mod:`s3queue.runtime.upkeep`); None leaves that to other workers or to
    ``s3queue sweep``.
    """

    poll_interval: float = 1.0
    prefetch: int | None = None
    sweep_interval: float | None = 60.0
    max_poll_interval: float = 10.0
    heartbeat_interval: float = 90.0

    def __post_init__(self) -> None:
        _set(self, "poll_interval", limits.POLL_INTERVAL.check(self.poll_interval, "poll_interval"))
        _set(
            self,
            "max_poll_interval",
            limits.MAX_POLL_INTERVAL.check(self.max_poll_interval, "max_poll_interval"),
        )
        _set(
            self,
            "heartbeat_interval",
            limits.HEARTBEAT_INTERVAL.check(self.heartbeat_interval, "heartbeat_interval"),
        )
        _set(self, "prefetch", limits.PREFETCH.optional(self.prefetch, "prefetch"))
        _set(
            self,
            "sweep_interval",
            limits.SWEEP_INTERVAL.optional(self.sweep_interval, "sweep_interval"),
        )

    @property
    def worker_ttl(self) -> float:
        """How long a worker not heard from counts as alive: three heartbeats, so
        that one lost or late heartbeat never passes a live worker's shards on."""
        return 3 * self.heartbeat_interval


@dataclass(frozen=True, slots=True)
class Scaling:
    """Autoscaling: the concurrency moves between ``min_concurrency`` and
    ``max_concurrency`` (None: the worker's ``concurrency``), one step at most every
    ``scale_cooldown`` seconds. Both None (the default): no autoscaling."""

    min_concurrency: int | None = None
    max_concurrency: int | None = None
    scale_cooldown: float = 5.0

    def __post_init__(self) -> None:
        _set(
            self,
            "min_concurrency",
            limits.CONCURRENCY.optional(self.min_concurrency, "min_concurrency"),
        )
        _set(
            self,
            "max_concurrency",
            limits.CONCURRENCY.optional(self.max_concurrency, "max_concurrency"),
        )
        _set(
            self,
            "scale_cooldown",
            limits.SCALE_COOLDOWN.check(self.scale_cooldown, "scale_cooldown"),
        )

    def bounds(self, concurrency: int) -> tuple[int, int]:
        """The lowest and highest concurrency for a worker that starts at
        ``concurrency``, which must lie between them."""
        low = self.min_concurrency or concurrency
        high = max(self.max_concurrency or concurrency, low)
        if not low <= concurrency <= high:
            raise ConfigurationError(
                f"concurrency={concurrency} is outside [{low}, {high}]",
                suggestion="min_concurrency <= concurrency <= max_concurrency",
            )
        return low, high


def _set(settings: object, name: str, value: object) -> None:
    object.__setattr__(settings, name, value)  # frozen: only __post_init__ writes


__all__ = ["Leases", "Polling", "Scaling"]
