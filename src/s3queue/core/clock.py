"""Time as the store tells it.

Leases, delays and timer buckets compare times written by different machines, and a
margin alone does not save that: a worker 30 s ahead would take every lease of the
others. The store is a clock every process shares: it stamps each write with its own
time (S3's Last-Modified). A :class:`StoreClock` writes a small object, reads its
stamp back, and so bounds the store's time against its machine's monotonic clock;
it then tells the store's time, so every process judges expiry on one clock.

Invariant: the bounds always contain the true difference (given the store's stamp
resolution and a drift bound), so the time told is off by at most half their width
(about half a second on S3, milliseconds on a local directory). A wall clock more
than :data:`MAX_SKEW` off the store's is refused: something is wrong with that
machine, and AWS itself refuses signed requests beyond it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from s3queue import sources
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
#: How fast the monotonic clock and the store's may drift apart (seconds per second).
#: 100 ppm is ten times what an undisciplined quartz oscillator does; it widens old
#: samples before they are combined with new ones.
MAX_DRIFT = 1e-4
#: One sample of a store with whole-second stamps bounds its time to a second; two
#: processes could then disagree by a second, and a delayed message start that much
#: early. Up to NARROW_SAMPLES more samples, NARROW_STEP seconds apart (each lands at
#: another phase of the store's second), narrow an estimate wider than NARROW_TO
#: (half-width, seconds): two requests each, in a process's first seconds.
NARROW_TO = 0.15
NARROW_SAMPLES = 3
NARROW_STEP = 0.37


class ClockSkewError(QueueError):
    """This machine's clock is too far from the store's to run safely."""

    default_retriable = False


def sample_body() -> bytes:
    """What a sample writes: never the same bytes twice. Through the S3 API the ETag
    is the MD5 of the bytes, so equal samples would pass another process's, written
    between our write and our read, for ours, and its later stamp for one made
    before our write returned."""
    return f"s3queue clock sample {sources.token_hex(8)}\n".encode()


@dataclass(frozen=True, slots=True)
class OffsetBounds:
    """The store's time minus this machine's monotonic clock lies in [low, high]."""

    low: float
    high: float
    #: sources.monotonic() when the bounds were measured.
    at: float

    @property
    def middle(self) -> float:
        return (self.low + self.high) / 2

    def aged(self, now: float) -> OffsetBounds:
        slack = MAX_DRIFT * max(0.0, now - self.at)
        return OffsetBounds(self.low - slack, self.high + slack, now)


class StoreClock:
    """The store's time, told by this machine's monotonic clock plus a measured
    offset.

    A sample writes an object and reads the store's stamp of it back: the store
    wrote it at a time in [stamp, stamp + resolution) while the monotonic clock read
    between the request and its answer, which bounds the store's time against the
    monotonic clock. The wall clock (``local``; tests pass a skewed one to play a
    machine whose clock is off) is read only to say how far it is from the store,
    for the warning, the metric and the refusal: a step of the wall clock between
    samples (NTP, a resumed VM) changes nothing. Until its first sample it tells
    wall-clock time.
    """

    def __init__(
        self,
        local: Clock = sources.wall,
        *,
        max_skew: float = MAX_SKEW,
        monotonic: Clock = sources.monotonic,
    ) -> None:
        self.local = local
        self.max_skew = max_skew
        self._monotonic = monotonic
        self.bounds: OffsetBounds | None = None
        #: Seconds the wall clock was ahead of the store's at the last sample.
        self.offset = 0.0
        #: Set while the wall clock is over the limit: every write measures again.
        self.refused: ClockSkewError | None = None
        self._sampled_at: float | None = None
        self._samples = 0
        self._lock = asyncio.Lock()

    def __call__(self) -> float:
        if self.bounds is None:
            return self.local()
        return self._monotonic() + self.bounds.middle

    @property
    def uncertainty(self) -> float:
        """The most the store's time told here can be off (seconds); inf before a
        sample."""
        return float("inf") if self.bounds is None else (self.bounds.high - self.bounds.low) / 2

    async def sync(self, storage: Storage, key: str) -> None:
        """Measure unless a measurement is recent; one at a time. Raises
        ClockSkewError while the wall clock is over the limit."""
        if not self.stale():
            return
        async with self._lock:
            if self.stale():
                await self.measure(storage, key)
        if self.refused is not None:
            raise self.refused

    def stale(self) -> bool:
        """No measurement yet, the last one is older than RESAMPLE_INTERVAL, it found
        the clock over the limit, or a young estimate is still wide (see NARROW_TO)."""
        last = self._sampled_at
        if self.refused is not None or last is None:
            return True
        age = self._monotonic() - last
        return age >= RESAMPLE_INTERVAL or (self.narrowing and age >= NARROW_STEP)

    async def settle(self, storage: Storage, key: str) -> None:
        """Take the samples that narrow a young, wide estimate now, NARROW_STEP
        apart (about a second on S3), rather than one at each sync: for a caller
        that must not see the estimate move by tenths of a second meanwhile."""
        await self.sync(storage, key)
        while self.narrowing:
            assert self._sampled_at is not None
            # Spacing, not synchronisation: each sample must land at another phase
            # of the store's second.
            await asyncio.sleep(max(0.0, self._sampled_at + NARROW_STEP - self._monotonic()))
            await self.sync(storage, key)

    @property
    def narrowing(self) -> bool:
        """Whether a young, wide estimate still wants samples at other phases (see
        NARROW_TO): true for a process's first second or so on S3."""
        return 0 < self._samples <= NARROW_SAMPLES and self.uncertainty > NARROW_TO

    def due_within(self, seconds: float) -> bool:
        """Whether a measurement is due now or will be within ``seconds`` (a caller
        about to write anyway, and next in that many seconds, samples on its write
        rather than let a sync write the clock object later)."""
        last = self._sampled_at
        if self.refused is not None or last is None or self.narrowing:
            return True
        return self._monotonic() - last + seconds >= RESAMPLE_INTERVAL

    async def measure_on(self, storage: Storage, key: str, body: bytes) -> None:
        """Measure on a write the caller makes anyway: ``body`` at ``key`` (a worker's
        heartbeat), read back. One GET more than the write, and no write of the
        clock object."""
        async with self._lock:
            await self.measure(storage, key, body)
        if self.refused is not None:
            raise self.refused

    async def measure(self, storage: Storage, key: str, body: bytes | None = None) -> None:
        """Write ``key`` (with ``body``, or a sample's), read its stamp back, and fold
        the sample in.

        Another process may write ``key`` between our write and our read; its stamp
        then falls before our read's answer, which bounds it instead of our write's.
        """
        start = self._monotonic()
        etag = await storage.put(key, sample_body() if body is None else body)
        written = self._monotonic()
        stored = await storage.get(key)
        answered = self._monotonic()
        if stored is None or stored.modified is None:
            log.debug("the store gives no write times: clock skew is not measured")
            self._sampled_at = answered
            self._samples = NARROW_SAMPLES + 1  # nothing to narrow
            return
        end = written if stored.etag == etag else answered
        self.observe(start, end, stored.modified, stored.resolution)

    def observe(self, start: float, end: float, stamp: float, resolution: float) -> None:
        """Fold in one sample: the store stamped ``stamp`` (truncated to
        ``resolution``) on a write made between monotonic times ``start`` and
        ``end``. Raises ClockSkewError when the wall clock is over the limit."""
        sample = OffsetBounds(stamp - end, stamp + resolution - start, end)
        previous = self.bounds
        if previous is not None:
            aged = previous.aged(end)
            low, high = max(aged.low, sample.low), min(aged.high, sample.high)
            if low <= high:
                sample = OffsetBounds(low, high, end)
            else:
                log.info("the monotonic clock moved against the store's since the last sample")
        self.bounds = sample
        self._sampled_at = end
        self._samples += 1
        self._check(sample)

    def _check(self, bounds: OffsetBounds) -> None:
        # The wall clock against the store's time, as an interval: only a skew that
        # is certain is reported.
        wall, mono = self.local(), self._monotonic()
        low, high = wall - (mono + bounds.high), wall - (mono + bounds.low)
        self.offset = (low + high) / 2
        certain = low if low > 0 else (-high if high < 0 else 0.0)
        direction = "ahead of" if low > 0 else "behind"
        self.refused = None
        if certain > self.max_skew:
            self.refused = ClockSkewError(
                f"this machine's clock is {certain:,.0f} s {direction} the store's, over "
                f"the limit of {self.max_skew:,.0f} s",
                suggestion="synchronise the clock (NTP, chrony or systemd-timesyncd)",
                metadata={"offset": self.offset, "limit": self.max_skew},
            )
            raise self.refused
        if certain > WARN_SKEW:
            log.warning(
                "this machine's clock is %.1f s %s the store's; s3queue corrects for it, "
                "but synchronise the clock (NTP)",
                certain,
                direction,
            )
