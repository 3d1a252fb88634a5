"""Clock skew: every process tells time by the store's clock, so no skew between
machines can make a lease look expired early, a delay end early, or a timer bucket
swallow a message."""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from s3queue import Queue
from s3queue.core.clock import (
    MAX_SKEW,
    NARROW_SAMPLES,
    NARROW_STEP,
    NARROW_TO,
    ClockSkewError,
    StoreClock,
    sample_body,
)
from s3queue.core.layout import TIMER_SEAL_MARGIN
from s3queue.storage import StoredObject, open_raw_storage, open_storage
from s3queue.storage.faults import FaultyStorage


def skewed(seconds: float) -> StoreClock:
    """The clock of a machine ``seconds`` ahead (negative: behind) of the others."""
    return StoreClock(lambda: time.time() + seconds)


class Tick:
    """A clock the test moves by hand (a plain function: trusted as is)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the estimate ----------------------------------------------------------------------------


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_sample_bounds_the_store_time_by_the_stamp_resolution() -> None:
    mono = Ticks()
    clock = StoreClock(lambda: 75.0, monotonic=mono)
    # Written between monotonic 100.2 and 100.3; the store stamped 70 (whole seconds):
    # its time was in [70, 71) then, so store - monotonic is in [-30.3, -29.2].
    clock.observe(100.2, 100.3, 70.0, 1.0)
    assert clock.bounds is not None
    assert (clock.bounds.low, clock.bounds.high) == pytest.approx((-30.3, -29.2))
    mono.now = 110.0
    assert clock() == pytest.approx(110.0 - 29.75)  # by the monotonic clock, not the wall


def test_samples_at_other_phases_narrow_the_bounds() -> None:
    mono = Ticks()
    mono.now = 101.0
    clock = StoreClock(lambda: 71.0, monotonic=mono)  # the wall clock agrees with the store
    clock.observe(100.2, 100.3, 70.0, 1.0)  # store - monotonic is -30.0: read 70.2..70.3
    clock.observe(100.9, 101.0, 70.0, 1.0)  # store read 70.9..71.0: stamped 70
    assert clock.bounds is not None
    # (the first sample is widened by 0.7 s of drift allowance: 70 microseconds)
    assert clock.bounds.low == pytest.approx(-30.3, abs=1e-4)
    assert clock.bounds.high == pytest.approx(-29.9, abs=1e-4)
    assert clock.uncertainty == pytest.approx(0.2, abs=1e-4)


def test_a_wide_first_estimate_is_narrowed_by_a_few_more_samples() -> None:
    mono = Ticks()
    mono.now = 100.3
    clock = StoreClock(lambda: mono.now - 30.0, monotonic=mono)  # store = monotonic - 30
    clock.observe(100.2, 100.3, 70.0, 1.0)  # the store's time was 70.2..70.3: stamped 70
    assert clock.uncertainty > NARROW_TO
    assert not clock.stale()  # not at once: the next sample must land at another phase
    samples = 1
    mono.now += NARROW_STEP
    while clock.stale():
        assert samples <= NARROW_SAMPLES
        start = mono.now
        mono.now += 0.05
        clock.observe(start, mono.now, float(int(mono.now - 30.0)), 1.0)
        samples += 1
        mono.now += NARROW_STEP
    assert samples > 1
    assert clock.uncertainty < 0.3  # from 0.55 (a few samples cannot always reach NARROW_TO)
    assert clock() == pytest.approx(mono.now - 30.0, abs=clock.uncertainty)
    mono.now += NARROW_STEP
    assert not clock.stale()  # narrowed: the next sample is RESAMPLE_INTERVAL away


async def test_settling_takes_the_narrowing_samples_at_once() -> None:
    """A caller that must not see the estimate move (rate limits count tokens on it)
    takes the narrowing samples in one go, instead of one at each sync."""
    mono = Ticks()
    mono.now = 100.3

    class Sampled(StoreClock):
        async def measure(self, storage: object, key: str, body: bytes | None = None) -> None:
            start = mono.now
            mono.now += 0.05
            self.observe(start, mono.now, float(int(mono.now - 30.0)), 1.0)
            mono.now += NARROW_STEP  # the next sample's spacing, without a real wait

    clock = Sampled(lambda: mono.now - 30.0, monotonic=mono)
    clock.observe(100.2, 100.3, 70.0, 1.0)
    mono.now += NARROW_STEP
    assert clock.narrowing
    await clock.settle(open_storage("memory://settle"), "clock")
    assert not clock.narrowing
    assert not clock.stale()


def test_a_stepped_wall_clock_changes_nothing() -> None:
    wall = [1000.0]
    mono = Ticks()
    clock = StoreClock(lambda: wall[0], monotonic=mono)
    clock.observe(0.0, 0.0, 1000.0, 0.0)
    wall[0] += 3600  # NTP steps the wall clock an hour
    mono.now = 5.0
    assert clock() == pytest.approx(1005.0)


def test_a_skew_beyond_the_limit_is_refused_until_a_sample_is_good() -> None:
    wall = [5000.0 + MAX_SKEW + 60]
    clock = StoreClock(lambda: wall[0], monotonic=Ticks())
    with pytest.raises(ClockSkewError, match="ahead of the store's, over the limit"):
        clock.observe(0.0, 0.0, 5000.0, 1.0)
    assert clock.stale()  # every write measures again while refused
    wall[0] = 5000.0
    clock.observe(0.0, 0.0, 5000.0, 1.0)
    assert clock.refused is None
    assert not clock.stale()


def test_a_skew_over_a_second_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = StoreClock(lambda: 100.0, monotonic=Ticks())
    with caplog.at_level(logging.WARNING, "s3queue.clock"):
        clock.observe(0.0, 0.0, 103.0, 1.0)
    assert "s behind the store's" in caplog.text
    assert clock.offset == pytest.approx(-3.5)


def test_an_offset_within_the_stamp_resolution_is_not_called_skew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = StoreClock(lambda: 100.5, monotonic=Ticks())
    with caplog.at_level(logging.WARNING, "s3queue.clock"):
        clock.observe(0.0, 0.1, 100.0, 1.0)
    assert caplog.text == ""


# --- on every store --------------------------------------------------------------------------


async def test_opening_measures_the_offset_to_the_store(store_url: str) -> None:
    q = await Queue.open(store_url, "skew", shards=1, clock=skewed(30))
    try:
        assert q.store_clock is not None
        assert q.store_clock.offset == pytest.approx(30, abs=1.1)
        assert q.clock() == pytest.approx(time.time(), abs=1.1)  # the store's time
    finally:
        await q.close()


class Overtaken(FaultyStorage):
    """A store where another process's clock sample lands between each of our
    writes and our reading it back."""

    async def get(self, key: str) -> StoredObject | None:
        await self.inner.put(key, sample_body())
        return await self.inner.get(key)


async def test_a_sample_overwritten_before_it_is_read_is_bounded_by_the_read(
    store_url: str,
) -> None:
    """The stamp read back is the other write's, made before the read answered but
    perhaps after our write returned (equal sample bytes would hide that through
    the S3 API, whose ETag is the MD5 of the bytes)."""
    ticks = itertools.count()
    clock = StoreClock(monotonic=lambda: float(next(ticks)))
    store = Overtaken(open_raw_storage(store_url))
    await clock.measure(store, "clock")
    stored = await store.inner.get("clock")
    assert stored is not None
    assert stored.modified is not None
    assert clock.bounds is not None
    # The monotonic clock read 0 before the write, 1 after it and 2 after the read.
    assert clock.bounds.low == stored.modified - 2
    await store.close()


async def test_a_machine_beyond_the_limit_is_refused(store_url: str) -> None:
    with pytest.raises(ClockSkewError, match="synchronise the clock"):
        await Queue.open(store_url, "far", shards=1, clock=skewed(-(MAX_SKEW + 120)))


async def test_a_worker_ahead_cannot_take_a_lease_that_is_still_valid(store_url: str) -> None:
    on_time = await Queue.open(store_url, "lease", shards=1, clock=skewed(0))
    ahead = await Queue.open(store_url, "lease", clock=skewed(30))
    try:
        await on_time.enqueue({"x": 1})
        [lease] = await on_time.claim(1, visibility_timeout=20)
        assert await ahead.claim(1, visibility_timeout=20) == []  # 30 s ahead: still held
        await on_time.ack(lease)
        info = await ahead.get(lease.id)
        assert info is not None
        assert info.status == "completed"
        assert info.attempts == 1
    finally:
        await on_time.close()
        await ahead.close()


@pytest.mark.parametrize("producer_offset", [-600.0, 600.0])
async def test_a_skewed_producer_delays_by_the_store_clock(
    store_url: str, producer_offset: float
) -> None:
    producer = await Queue.open(store_url, "late", shards=1, clock=skewed(producer_offset))
    worker = await Queue.open(store_url, "late", clock=skewed(0))
    try:
        short = await producer.enqueue({"n": 1}, delay=60)  # in the log
        long = await producer.enqueue({"n": 2}, delay=600)  # in a timer bucket
        assert await worker.claim(10, 30) == []
        for mid in (short, long):
            info = await worker.get(mid)
            assert info is not None, mid
            assert info.status == "delayed", mid
            assert info.visible_at == pytest.approx(
                time.time() + (60 if mid == short else 600), abs=5
            )
    finally:
        await producer.close()
        await worker.close()


async def test_a_write_into_a_sealed_timer_bucket_goes_to_the_log(store_url: str) -> None:
    """A producer whose clock is far behind (here: trusted although wrong) writes into
    a timer bucket the consumers sealed long ago: the message must still run."""
    worker_clock = Tick(1_800_000_000.0)
    producer_clock = Tick(worker_clock.now - 3600)
    worker = await Queue.open(store_url, "sealed", shards=1, clock=worker_clock)
    producer = await Queue.open(store_url, "sealed", clock=producer_clock)
    try:
        first = await producer.enqueue({"n": 1}, delay=300)
        [lease] = await worker.claim(10, 30)  # due long ago by the worker's clock
        assert lease.id == first
        await worker.ack(lease)
        worker_clock.now += TIMER_SEAL_MARGIN  # the bucket seals on the next empty probe
        assert await worker.claim(10, 30) == []
        second = await producer.enqueue({"n": 2}, delay=300)  # the same bucket
        assert "-L" in second
        assert await worker.wake_changed()  # the producer announced it
        [late] = await worker.claim(10, 30)
        assert late.id == second
        assert late.payload == {"n": 2}
    finally:
        await producer.close()
        await worker.close()


async def test_read_only_views_write_no_clock_sample(store_url: str) -> None:
    q = await Queue.open(store_url, "quiet", shards=1)
    await q.close()
    storage = open_storage(store_url)
    await storage.delete("quiet/clock")
    view = await Queue.open(storage, "quiet", create=False)
    await view.stats()
    assert await storage.get("quiet/clock") is None
    await view.close()
    await storage.close()
