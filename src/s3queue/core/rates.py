"""Rate limits across every worker process, kept as token buckets in the cursors.

A limit of R jobs a second on a queue of S shards gives each shard's cursor a bucket
(:class:`Bucket`) that fills at R/S tokens a second up to a small burst
(:class:`ShardRate`). A claim takes a message only when every bucket the message
falls under (the queue's, its rate key's) holds a whole token, and spends it in the
very cursor write that leases the message (:class:`Tokens`): the limiter costs no
request of its own, and the compare-and-swap that keeps two workers from leasing
one message also keeps them from spending one token twice. A process leaves a
bucket alone while another one is spending it (:func:`held_keys`), so that each
shard's tokens mostly have one taker.

Invariant: over any span of T seconds of a spender's clock, the messages claimed
from one shard under a limit number at most its burst + T x its rate, so the
cluster starts at most S x burst + T x R of them. A process whose clock is behind
the last spender's mints nothing (a bucket's ``at`` never moves back); one whose
clock is ahead can take a token that much early when it takes a bucket over.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from s3queue.errors import ConfigurationError

#: The bucket of the limit on the whole queue. Rate keys are 1 to 256 characters,
#: so no key's bucket can take its place.
QUEUE_WIDE = ""
MAX_RATE_KEY = 256
#: Seconds in each unit a rate may be written in.
UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: The fastest limit: far beyond what claims of one queue can reach (a cursor write
#: per claim per shard), so a faster "limit" is a mistake, not a wish.
MAX_PER_SECOND = 100_000.0
#: The slowest: one job an hour. Slower work belongs in a cron schedule.
MIN_PER_SECOND = 1 / 3600
#: A shard's bucket holds one token plus this many seconds of its rate, so that a
#: claim that comes a little after its token was due loses nothing (tokens beyond
#: the burst are lost). No more: after a stall of the machine every shard catches up
#: by that much at once, which is what crowds the cluster's busiest second (30 ms
#: gave 54-56 jobs in a second at 50/s on 4 shards, 10 ms gives 51-54)...
BURST_SLACK = 0.01
#: ...and at least this many seconds of its rate: a fast limit needs claims of
#: several messages, one per cursor round trip, to reach its rate.
BURST_WINDOW = 0.05
#: The shards' buckets keep out of step: a new bucket's next token on shard k of S
#: comes at a time that is k/R past a multiple of S/R (R the limit), so that across
#: the cluster tokens come one at a time, 1/R apart, not one on every shard at once
#: (which one claim round would take in a row of cursor writes). Only for a shard
#: getting a token at least this often (seconds): slower ones never collide.
STAGGER_UP_TO = 1.0
#: A process leaves the tokens of a bucket to another process that had spent from
#: it less than this many seconds before the bucket was read, and kept up with it
#: (see :func:`keeping_up`). With every process chasing every shard's next token,
#: each token would cost the losers a failed write and a re-read, and at each change
#: of hands the clocks of two processes meet: a skew of a few tenths of a second
#: gives a token before its time.
RATE_HOLD = 5.0
#: Float tolerance when a token is due: a store time ~1.8e9 s keeps time to about
#: 2e-7 s, so a claim made when the next token is due may see 0.999999 of it. The
#: due time is told that much later (seconds), and a level that much short counts.
TIME_TOLERANCE = 1e-6
TOKEN_TOLERANCE = 1e-6

_RATE = re.compile(r"(\d+(?:\.\d+)?)/([smh])")
Unit = Literal["s", "m", "h"]
FORMS = "N/s, N/m or N/h (N jobs a second, minute or hour), e.g. '100/s', '30/m', '2.5/h'"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` jobs per ``unit`` (``"s"``, ``"m"`` or ``"h"``), cluster-wide.

    ``RateLimit.parse("100/s")``; ``str()`` writes it back in that form.
    """

    count: float
    unit: Unit = "s"

    def __post_init__(self) -> None:
        count = self.count
        if isinstance(count, bool) or not isinstance(count, int | float):
            raise _refused(repr(count), "its count is not a number")
        if self.unit not in UNITS:
            raise _refused(f"{count}/{self.unit}", "its unit is not s, m or h")
        if not math.isfinite(count) or count <= 0:
            raise _refused(f"{count}/{self.unit}", "its count is not a positive number")
        if not MIN_PER_SECOND <= count / UNITS[self.unit] <= MAX_PER_SECOND:
            raise _refused(f"{count:g}/{self.unit}", "it is out of range")
        object.__setattr__(self, "count", float(count))  # frozen: only here

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"N/s"``, ``"N/m"`` or ``"N/h"``, N a positive decimal number; nothing else
        (no spaces, no "sec" or "min": one spelling for every process)."""
        match = _RATE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise _refused(repr(text), "it is not a rate")
        count, unit = match.groups()
        return cls(float(count), unit)  # type: ignore[arg-type]

    @classmethod
    def of(cls, limit: RateLimit | str) -> RateLimit:
        return limit if isinstance(limit, RateLimit) else cls.parse(limit)

    @property
    def per_second(self) -> float:
        return self.count / UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.count:g}/{self.unit}"


def _refused(shown: str, problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"rate limit {shown}: {problem}",
        suggestion=f"write {FORMS}; from 1/h to {MAX_PER_SECOND:,.0f}/s",
        metadata={"argument": "rate_limit", "value": shown},
    )


def check_rate_key(key: object, name: str = "rate_key") -> str:
    """A rate key as given, or ConfigurationError: a string of 1 to 256 characters."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_RATE_KEY:
        raise ConfigurationError(
            f"{name}={key!r} is not a rate key",
            suggestion=f"a rate key is a string of 1 to {MAX_RATE_KEY} characters "
            "(e.g. the task's name)",
            metadata={"argument": name},
        )
    return key


class Bucket(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A shard's tokens for one limit: ``tokens`` left by the spend at store time
    ``at``; ``overflowed`` when the bucket had been full and lost a whole token or
    more before that spend (its spender was not keeping up, see :func:`keeping_up`)."""

    tokens: float
    at: float
    overflowed: bool = False


@dataclass(frozen=True, slots=True)
class ShardRate:
    """One limit of a claiming process as one shard's share: ``rate`` tokens a
    second into the bucket ``key``, which holds at most ``burst``, on one of
    ``shards`` shards (see STAGGER_UP_TO)."""

    key: str
    rate: float
    burst: float
    shards: int = 1

    @classmethod
    def share(cls, key: str, limit: RateLimit, shards: int) -> ShardRate:
        rate = limit.per_second / shards
        burst = max(1.0 + rate * BURST_SLACK, rate * BURST_WINDOW)
        return cls(key, rate, burst, shards)

    def owed(self, now: float, shard: int) -> float:
        """Tokens a new bucket of ``shard`` starts short of, so that its next token
        comes in step (see STAGGER_UP_TO): from 0 to 1."""
        if self.rate * STAGGER_UP_TO < 1.0:
            return 0.0
        # Tokens until the next of this shard's token times (k/R past a multiple of
        # S/R), seen from the one a bucket that just spent its token would expect.
        return (shard / self.shards - now * self.rate) % 1.0


def level(bucket: Bucket | None, rate: ShardRate, now: float) -> float:
    """The tokens in the bucket at ``now`` (none come before its last spend: a
    reader whose clock is behind the spender's mints nothing). A bucket not written
    yet (or dropped when full) holds one token, not its burst: when a backlog
    arrives on a quiet queue, every shard starts at once, and the cluster's first
    second then holds one job per shard beyond the rate, not a burst per shard."""
    if bucket is None:
        return 1.0
    return min(rate.burst, _unbounded(bucket, rate, now))


def _unbounded(bucket: Bucket, rate: ShardRate, now: float) -> float:
    return bucket.tokens + max(0.0, now - bucket.at) * rate.rate


def arrival(bucket: Bucket | None, rate: ShardRate) -> float:
    """When the bucket holds a whole token (it may be past)."""
    if bucket is None:
        return -math.inf
    if bucket.tokens >= 1.0 - TOKEN_TOLERANCE:
        return bucket.at
    return bucket.at + (1.0 - bucket.tokens) / rate.rate + TIME_TOLERANCE


def held_keys(
    buckets: Mapping[str, Bucket],
    rates: Iterable[ShardRate],
    mine: Mapping[str, Bucket],
    seen_at: float,
) -> tuple[str, ...]:
    """The buckets whose tokens this process leaves to another (see RATE_HOLD):
    spent last by someone else (they are not as ``mine``, the buckets this process
    wrote last) less than RATE_HOLD before ``seen_at``, when ``buckets`` were read,
    by a process keeping up with them. Only a newer read can tell that the other
    process stopped: the caller reads again now and then."""
    held = []
    for rate in rates:
        bucket = buckets.get(rate.key)
        if bucket is None or bucket == mine.get(rate.key) or bucket.at <= seen_at - RATE_HOLD:
            continue
        if keeping_up(bucket):
            held.append(rate.key)
    return tuple(held)


def keeping_up(bucket: Bucket) -> bool:
    """Whether the process that spent from ``bucket`` last was keeping up with it. One
    that lacks free slots claims only when a job ends, and the bucket meanwhile fills
    and loses tokens: then others should help. (Judged by the spender on its own
    clock: the reader's, maybe skewed, plays no part.)"""
    return not bucket.overflowed


class Tokens:
    """A shard's buckets while one claim (or a look at what it could claim) spends
    them. The buckets of ``hold`` are left to another process: messages under them
    are passed by."""

    def __init__(
        self,
        buckets: Mapping[str, Bucket],
        rates: Iterable[ShardRate],
        now: float,
        *,
        hold: Collection[str] = (),
        shard: int = 0,
    ) -> None:
        self.stored = buckets
        self.rates = {rate.key: rate for rate in rates}
        self.now = now
        self.hold = hold
        self.shard = shard
        self._levels: dict[str, float] = {}
        self.spent: set[str] = set()

    def _keys(self, rate_key: str | None) -> list[str]:
        """The buckets a message with ``rate_key`` falls under."""
        keys = [QUEUE_WIDE] if QUEUE_WIDE in self.rates else []
        if rate_key is not None and rate_key in self.rates:
            keys.append(rate_key)
        return keys

    def level(self, key: str) -> float:
        found = self._levels.get(key)
        if found is None:
            found = self._levels[key] = level(self.stored.get(key), self.rates[key], self.now)
        return found

    def _has_token(self, key: str) -> bool:
        return key not in self.hold and self.level(key) >= 1.0 - TOKEN_TOLERANCE

    @property
    def exhausted(self) -> bool:
        """Whether no message can be taken any more: the queue's bucket is empty."""
        return QUEUE_WIDE in self.rates and not self._has_token(QUEUE_WIDE)

    def blocked(self, rate_key: str | None) -> bool:
        """Whether the message's own key (not the queue) lacks a token now."""
        return rate_key is not None and rate_key in self.rates and not self._has_token(rate_key)

    def take(self, rate_key: str | None) -> bool:
        """Spend a token of every bucket a message with ``rate_key`` falls under, if
        each has one; whether it did."""
        keys = self._keys(rate_key)
        if not all(self._has_token(key) for key in keys):
            return False
        for key in keys:
            self._levels[key] = self.level(key) - 1.0
            self.spent.add(key)
        return True

    def arrival(self, rate_key: str | None) -> float | None:
        """When a message with ``rate_key`` can take its tokens; None if it falls
        under no limit."""
        keys = self._keys(rate_key)
        if not keys:
            return None
        return max(arrival(self.stored.get(key), self.rates[key]) for key in keys)

    def buckets(self) -> dict[str, Bucket]:
        """The buckets after the spending: spent ones at their new level, full ones
        dropped (a missing bucket holds a token, which is less), those of limits
        this process does not know kept as they are (other processes may still apply
        them)."""
        out: dict[str, Bucket] = {}
        for key, bucket in self.stored.items():
            unknown = key not in self.rates
            if unknown or (key not in self.spent and self.level(key) < self.rates[key].burst):
                out[key] = bucket
        for key in self.spent:
            stored, rate = self.stored.get(key), self.rates[key]
            if stored is None:
                owed = rate.owed(self.now, self.shard)
                out[key] = Bucket(tokens=self.level(key) - owed, at=self.now)
                continue
            # A token lost, not a fraction: a spender a little late is no reason for
            # another process to join in (and race it for the cursor).
            overflowed = _unbounded(stored, rate, self.now) >= rate.burst + 1.0
            at = max(self.now, stored.at)
            out[key] = Bucket(tokens=self.level(key), at=at, overflowed=overflowed)
        return out
