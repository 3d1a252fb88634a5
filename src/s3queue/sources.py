"""Where the package reads the time and draws chance: one seam, set per context.

Every clock read (wall and monotonic) and every random draw (jitter, shard order,
tokens and nonces) goes through this module, never through ``time``, ``random`` or
``secrets`` directly (tests/test_layers.py holds the package to it). In production
it is the machine's clocks and the system's randomness. The simulation (bench/sim)
runs hundreds of pods in one process on virtual time: it gives each pod its own
:class:`Sources` (its skewed clocks on the simulated loop, a seeded random source)
by setting them in the context that pod's tasks are created in, which asyncio copies
into every task and callback they start. Nothing below reads a pod's identity: a
context is the whole injection.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sources:
    """A machine's clocks and its randomness.

    ``rng`` None means the system's: the ``random`` module for jitter and ``secrets``
    for tokens. A seeded ``random.Random`` makes every draw repeatable (tokens too,
    which then only need to be unique, not unguessable: simulation only)."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random | None = None


SYSTEM = Sources()
_current: ContextVar[Sources] = ContextVar("s3queue_sources", default=SYSTEM)


def current() -> Sources:
    return _current.get()


@contextlib.contextmanager
def using(sources: Sources) -> Iterator[None]:
    """Read the time and draw chance from ``sources`` in this context, and in every
    task created from it, until the block ends."""
    token = _current.set(sources)
    try:
        yield
    finally:
        _current.reset(token)


def wall() -> float:
    """Seconds since the epoch by this machine's wall clock (``time.time``)."""
    return _current.get().wall()


def monotonic() -> float:
    """This machine's monotonic clock (``time.monotonic``)."""
    return _current.get().monotonic()


def uniform(low: float, high: float) -> float:
    rng = _current.get().rng
    return random.uniform(low, high) if rng is None else rng.uniform(low, high)


def chance() -> float:
    """A float in [0, 1)."""
    rng = _current.get().rng
    return random.random() if rng is None else rng.random()


def shuffled(items: Sequence[T]) -> list[T]:
    """``items`` in a random order (a new list)."""
    rng = _current.get().rng
    return random.sample(items, len(items)) if rng is None else rng.sample(items, len(items))


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as hex: unguessable from the system, repeatable when
    the sources are seeded."""
    rng = _current.get().rng
    return secrets.token_hex(nbytes) if rng is None else rng.randbytes(nbytes).hex()
