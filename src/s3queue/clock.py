"""Time as the store tells it.

Leases, delays and timer buckets compare times written by different machines, and a
margin alone does not save that: a worker 30 s ahead would take every lease of the
others. The store is a clock every process shares: it stamps each write with its own
time (S3's Last-Modified). A :class:`StoreClock` writes a small object, reads its
stamp back, and so bounds its machine's offset to the store; it then tells time as
"local time minus offset", so every process judges expiry on one clock.

Invariant: the offset interval always contains the true offset (given the store's
stamp resolution and a drift bound), so the estimate is off by at most half its
width (about half a second on S3, milliseconds on a local directory). A skew beyond
:data:`MAX_SKEW` is refused: something is wrong with that machine's clock, and AWS
itself refuses signed requests beyond it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from s3queue.errors import QueueError
from s3queue.storage import Storage

log = logging.getLogger("s3queue.clock")

Clock = Callable[[], float]

#: The largest offset to the store a process may have (seconds). AWS S3 refuses
#: requests signed more than 15 minutes off its clock (RequestTimeTooSkewed); other
#: stores do not, so the queue enforces the same limit everywhere.
MAX_SKEW = 900.0
#: Offsets provably larger than this are logged as a warning (they are corrected).
WARN_SKEW = 1.0
#: Seconds between measurements: clocks drift, and NTP may step them.
RESAMPLE_INTERVAL = 300.0
#: How fast two clocks may drift apart (seconds per second). 100 ppm is ten times
#: what an undisciplined quartz oscillator does; it widens old samples before they
#: are combined with new ones.
MAX_DRIFT = 1e-4


class ClockSkewError(QueueError):
    """This machine's clock is too far from the store's to run safely."""

    default_retriable = False


@dataclass(frozen=True, slots=True)
class OffsetBounds:
    """The true offset (local minus store, seconds) lies in [low, high]."""

    low: float
    high: float
    #: time.monotonic() when the bounds were measured.
    at: float

    @property
    def middle(self) -> float:
        return (self.low + self.high) / 2

    def aged(self, now: float) -> OffsetBounds:
        slack = MAX_DRIFT * max(0.0, now - self.at)
        return OffsetBounds(self.low - slack, self.high + slack, now)


class StoreClock:
    """Local time corrected by the measured offset to the store's clock.

    ``StoreClock()`` reads ``time.time``; tests pass a skewed ``local`` clock to play
    a machine whose clock is off. Until its first measurement it tells local time.
    """

    def __init__(
        self,
        local: Clock = time.time,
        *,
        max_skew: float = MAX_SKEW,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.local = local
        self.max_skew = max_skew
        self._monotonic = monotonic
        self.bounds: OffsetBounds | None = None
        self._sampled_at: float | None = None

    def __call__(self) -> float:
        return self.local() - self.offset

    @property
    def offset(self) -> float:
        """Seconds this machine's clock is ahead of the store's (best estimate)."""
        return 0.0 if self.bounds is None else self.bounds.middle

    @property
    def uncertainty(self) -> float:
        """The most the offset estimate can be off by (seconds); inf before a sample."""
        return float("inf") if self.bounds is None else (self.bounds.high - self.bounds.low) / 2

    def stale(self) -> bool:
        """No measurement yet, or the last one is older than RESAMPLE_INTERVAL."""
        last = self._sampled_at
        return last is None or self._monotonic() - last >= RESAMPLE_INTERVAL

    async def measure(self, storage: Storage, key: str) -> None:
        """Write ``key``, read its stamp back, and fold the sample into the offset.

        Another process may write ``key`` between our write and our read; its stamp
        still falls between the two, which is all the bounds assume.
        """
        self._sampled_at = self._monotonic()
        sent = self.local()
        await storage.put(key, b"s3queue clock sample\n")
        stored = await storage.get(key)
        answered = self.local()
        if stored is None or stored.modified is None:
            log.debug("the store gives no write times: clock skew is not measured")
            return
        self.observe(sent, answered, stored.modified, stored.resolution)

    def observe(self, sent: float, answered: float, modified: float, resolution: float) -> None:
        """Fold in one sample: the store stamped ``modified`` (truncated to
        ``resolution``) on a write made locally between ``sent`` and ``answered``."""
        now = self._monotonic()
        sample = OffsetBounds(sent - (modified + resolution), answered - modified, now)
        previous = self.bounds
        if previous is not None:
            aged = previous.aged(now)
            low, high = max(aged.low, sample.low), min(aged.high, sample.high)
            if low <= high:
                sample = OffsetBounds(low, high, now)
            else:
                log.info("the clock moved against the store's since the last sample")
        self.bounds = sample
        self._check(sample)

    def _check(self, bounds: OffsetBounds) -> None:
        # Judged on the interval, so only a skew that is certain is reported.
        certain = bounds.low if bounds.low > 0 else (-bounds.high if bounds.high < 0 else 0.0)
        direction = "ahead of" if bounds.low > 0 else "behind"
        if certain > self.max_skew:
            raise ClockSkewError(
                f"this machine's clock is {certain:,.0f} s {direction} the store's, over "
                f"the limit of {self.max_skew:,.0f} s",
                suggestion="synchronise the clock (NTP, chrony or systemd-timesyncd)",
                metadata={"offset": bounds.middle, "limit": self.max_skew},
            )
        if certain > WARN_SKEW:
            log.warning(
                "this machine's clock is %.1f s %s the store's; s3queue corrects for it, "
                "but synchronise the clock (NTP)",
                certain,
                direction,
            )
