"""Retry delays for failed attempts: exponential, capped, with jitter.

Jitter spreads retries of messages that failed together (a dependency went down)
so they do not all come back in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
        if self.initial < 0 or self.factor < 1 or self.max < self.initial:
            raise ConfigurationError(
                f"invalid {self!r}",
                suggestion="use initial >= 0, factor >= 1 and max >= initial",
            )

    def delay(self, attempt: int) -> float:
        base = min(self.max, self.initial * self.factor ** max(0, attempt - 1))
        if self.jitter:
            return random.uniform(base / 2, base)
        return base
