"""Every number a user can give s3queue, and the range it must lie in.

Invariant: a number that passed a check here is a plain, finite ``int`` or ``float``
inside its documented range. That matters beyond tidiness: msgspec writes NaN and
infinity as JSON ``null``, which the float fields of a cursor, segment or queue.json
refuse to decode, so one unchecked ``nan`` would stop every worker of a queue. A
failed check raises :class:`ConfigurationError` naming the argument (as the caller
spelled it: ``delay`` in Python, ``--delay`` on the command line), the value, the
range and the fix, in one line.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from s3queue.errors import ConfigurationError

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass(frozen=True, slots=True)
class Real:
    """A finite number from ``low`` to ``high`` (``low`` excluded when ``above_low``);
    ``unit`` is appended when the range is shown, ``fix`` says what to do instead."""

    low: float
    high: float
    fix: str
    above_low: bool = False
    unit: str = "seconds"

    def check(self, value: object, name: str) -> float:
        # The common case first, cheap because every enqueue passes here: a plain float
        # or int in range (NaN fails the comparisons); everything else takes _real.
        if (
            (type(value) is float or type(value) is int)
            and self.low <= value <= self.high
            and (value != self.low or not self.above_low)
        ):
            return float(value)
        return _real(value, name, self)

    def optional(self, value: object, name: str) -> float | None:
        return None if value is None else self.check(value, name)

    def describe(self) -> str:
        low, high = _number(self.low), _number(self.high)
        unit = f" {self.unit}" if self.unit else ""
        span = f"more than {low} and at most {high}" if self.above_low else f"{low} to {high}"
        readable = f" ({_duration(self.high)})" if self.unit == "seconds" else ""
        return f"{span}{unit}{readable}"


@dataclass(frozen=True, slots=True)
class Integer:
    """A whole number from ``low`` to ``high``; bools and floats are refused."""

    low: int
    high: int
    fix: str

    def check(self, value: object, name: str) -> int:
        if type(value) is int and self.low <= value <= self.high:
            return value
        return _integer(value, name, self)

    def optional(self, value: object, name: str) -> int | None:
        return None if value is None else self.check(value, name)

    def describe(self) -> str:
        return f"an integer from {_number(self.low)} to {_number(self.high)}"


# --- the ranges ----------------------------------------------------------------------------

#: Lease length, and how far one extend reaches: SQS stops its visibility timeout at
#: 12 h too. A longer job keeps its lease by extending it (the Worker does).
VISIBILITY_TIMEOUT = Real(
    0.0, 12 * HOUR, above_low=True, fix="a longer job keeps its lease by extending it"
)
#: Delay before a message (or a retry) becomes visible: a year. Timer keys and clocks
#: cope with more, but work due later than that belongs in a cron schedule or a database.
DELAY = Real(0.0, 365 * DAY, fix="schedule work due later than a year with a cron")
#: Delay before a failed message is retried (Backoff, ``fail(backoff=...)``): a year too.
RETRY_DELAY = Real(0.0, 365 * DAY, fix="a failure that lasts longer belongs in the dead letters")
#: Priority: a signed 32-bit integer (an INTEGER column anywhere), far wider than
#: RabbitMQ's 0-255 or BullMQ's 2^21, narrow enough to stay a plain JSON number.
PRIORITY = Integer(-(2**31), 2**31 - 1, fix="higher runs first")
#: Attempts per message: SQS's maxReceiveCount has the same 1 to 1,000.
MAX_ATTEMPTS = Integer(1, 1000, fix="a message that fails that often belongs in the dead letters")
#: Shards of a queue: each is a cursor a worker reads on every claim round.
SHARDS = Integer(1, 1024, fix="a few shards per worker process is plenty")
#: How long a finished message's dedup key keeps refusing duplicates: a year.
DEDUP_RETENTION = Real(0.0, 365 * DAY, fix="keep keys that must never repeat in your database")
#: How long finished messages and dead letters are kept: a second to ten years (a
#: test may want seconds; S3 lifecycle rules count in days).
TTL = Real(0.0, 3650 * DAY, above_low=True, fix="e.g. 7 days for results, 14 for dead letters")
#: How often a worker offers to sweep each queue it serves.
SWEEP_INTERVAL = Real(0.0, DAY, above_low=True, fix="every minute or so suits most queues")
#: The same on the command line, where 0 turns sweeping off.
SWEEP_EVERY = Real(0.0, DAY, fix="0 never sweeps; every minute or so suits most queues")
#: Tolerated clock skew: S3 itself refuses requests signed 15 min off
#: (RequestTimeTooSkewed), so a larger margin only delays recovery of dead workers' leases.
SKEW_MARGIN = Real(0.0, 15 * MINUTE, fix="fix the clock (NTP) rather than widen the margin")
#: Concurrent handlers of one worker: thousands of async handlers are reasonable.
CONCURRENCY = Integer(1, 10_000, fix="run more worker processes for more")
#: Leases held beyond the running jobs: 4 x the most concurrency (the adaptive ceiling).
PREFETCH = Integer(0, 40_000, fix="omit it to let the worker adapt it")
#: Messages one claim may lease: enough for the largest worker's concurrency plus
#: prefetch (10,000 + 4 x 10,000), so a valid Worker never asks for more.
CLAIM_MESSAGES = Integer(0, 50_000, fix="claim in batches")
#: Idle polling: positive (zero would spin on the store) and at most an hour.
POLL_INTERVAL = Real(
    0.0, HOUR, above_low=True, fix="every poll is a request; 1 to 10 s suits most queues"
)
#: The longest gap between two idle checks of a whole cluster's shards.
MAX_POLL_INTERVAL = Real(
    0.0, HOUR, above_low=True, fix="10 s suits most queues: an idle cluster reads shards/10 s"
)
#: Seconds between two heartbeats of a worker: one PUT each, per queue served.
HEARTBEAT_INTERVAL = Real(
    1.0, HOUR, fix="90 s suits most clusters: each is a PUT; a worker is dead after three"
)
#: One attempt's run time before it is cancelled: a week; None means no limit.
JOB_TIMEOUT = Real(0.0, 7 * DAY, above_low=True, fix="omit it for no limit")
#: Time running jobs get to finish on shutdown: up to the longest lease, 12 h.
SHUTDOWN_TIMEOUT = Real(0.0, 12 * HOUR, fix="jobs still running then are released")
#: Minimum time between two autoscaling steps.
SCALE_COOLDOWN = Real(0.0, HOUR, fix="a few seconds lets a step show its effect")
#: How long failing claims may last before a worker reports itself unhealthy.
UNHEALTHY_AFTER = Real(0.0, DAY, fix="e.g. 30 s, a few times the longest poll interval")
#: How often a dashboard or ``stats --watch`` rereads the bucket (each read costs requests).
REFRESH = Real(0.0, HOUR, above_low=True, fix="every few seconds, e.g. 5")
#: Growth of the retry delay per attempt: 1 (constant) to 100.
BACKOFF_FACTOR = Real(1.0, 100.0, unit="", fix="2 doubles the delay at each attempt")
#: A TCP port; 0 lets the system pick a free one.
PORT = Integer(0, 65535, fix="0 picks a free port")
#: Dead letters one listing returns (each costs a GET).
LIST_LIMIT = Integer(1, 1_000_000, fix="e.g. 100")
#: ``s3queue demo``: jobs and worker processes it starts on this machine.
DEMO_JOBS = Integer(1, 1_000_000, fix="the demo shows its point with a few thousand")
DEMO_WORKERS = Integer(1, 64, fix="one or two per core")


# --- the checks ----------------------------------------------------------------------------


def _real(value: object, name: str, limit: Real) -> float:
    number: int | float
    if isinstance(value, int) and not isinstance(value, bool):
        number = value  # compared exactly, however large, and converted once in range
    else:
        converted = value if isinstance(value, float) else _as_real(value)
        if converted is None:
            raise _refused(name, value, "is not a number", limit.describe(), limit.fix)
        if not math.isfinite(converted):
            raise _refused(name, value, "is not a finite number", limit.describe(), limit.fix)
        number = converted
    low_ok = limit.low < number if limit.above_low else limit.low <= number
    if not low_ok or number > limit.high:
        raise _refused(name, value, "is out of range", limit.describe(), limit.fix)
    return float(number)


def _as_real(value: object) -> float | None:
    """Other real numbers (numpy's, Decimal, Fraction) as floats; None for the rest."""
    if isinstance(value, bool | str | bytes) or not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _integer(value: object, name: str, limit: Integer) -> int:
    if isinstance(value, bool | float):
        raise _refused(name, value, "is not an integer", limit.describe(), limit.fix)
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise _refused(name, value, "is not an integer", limit.describe(), limit.fix) from None
    if not limit.low <= number <= limit.high:
        raise _refused(name, value, "is out of range", limit.describe(), limit.fix)
    return number


def _refused(name: str, value: object, problem: str, span: str, fix: str) -> ConfigurationError:
    shown = _shown(value)
    return ConfigurationError(
        f"{name}={shown} {problem}",
        suggestion=f"use {span}" + (f"; {fix}" if fix else ""),
        metadata={"argument": name, "value": shown, "range": span},
    )


def _shown(value: object) -> str:
    """The value as the caller wrote it, short enough for one line."""
    if isinstance(value, int) and value.bit_length() > 128:
        # str() of a huge int is slow, and refused beyond 4,300 digits.
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return repr(value)


def _duration(seconds: float) -> str:
    for unit, size in (("days", DAY), ("h", HOUR), ("min", MINUTE)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {'day' if unit == 'days' and count == 1 else unit}"
    return f"{_number(seconds)} s"


__all__ = [
    "BACKOFF_FACTOR",
    "CLAIM_MESSAGES",
    "CONCURRENCY",
    "DAY",
    "DEDUP_RETENTION",
    "DELAY",
    "DEMO_JOBS",
    "DEMO_WORKERS",
    "HEARTBEAT_INTERVAL",
    "HOUR",
    "JOB_TIMEOUT",
    "LIST_LIMIT",
    "MAX_ATTEMPTS",
    "MAX_POLL_INTERVAL",
    "MINUTE",
    "POLL_INTERVAL",
    "PORT",
    "PREFETCH",
    "PRIORITY",
    "REFRESH",
    "RETRY_DELAY",
    "SCALE_COOLDOWN",
    "SHARDS",
    "SHUTDOWN_TIMEOUT",
    "SKEW_MARGIN",
    "SWEEP_EVERY",
    "SWEEP_INTERVAL",
    "TTL",
    "UNHEALTHY_AFTER",
    "VISIBILITY_TIMEOUT",
    "Integer",
    "Real",
]
