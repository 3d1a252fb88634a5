"""Retry delays for failed attempts: exponential, capped, with jitter.

Jitter spreads retries of messages that failed together (a dependency went down)
so they do not all come back in the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from s3queue import limits, sources
from s3queue.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n + 1`` after attempt ``n`` failed:
    ``min(max, initial * factor ** (n - 1))``, scaled into ``[delay/2, delay]`` when
    ``jitter`` is on ("equal jitter": never retries sooner than half the delay)."""

    initial: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        # Stored as checked floats: every delay this returns is a finite number in
        # limits.RETRY_DELAY, which is what a Fail writes into a cursor.
        initial = limits.RETRY_DELAY.check(self.initial, "Backoff.initial")
        factor = limits.BACKOFF_FACTOR.check(self.factor, "Backoff.factor")
        longest = limits.RETRY_DELAY.check(self.max, "Backoff.max")
        if longest < initial:
            raise ConfigurationError(
                f"Backoff.max={self.max!r} is below Backoff.initial={self.initial!r}",
                suggestion="max is the longest delay; make it at least initial",
            )
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "max", longest)

    def delay(self, attempt: int) -> float:
        try:
            base = min(self.max, self.initial * self.factor ** max(0, attempt - 1))
        except OverflowError:  # factor ** attempt beyond any float: long past max
            base = self.max if self.initial > 0 else 0.0
        if self.jitter:
            return sources.uniform(base / 2, base)
        return base
