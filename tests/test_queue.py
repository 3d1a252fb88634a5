"""The Queue API's semantics, on every backend, with a clock the tests control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import s3queue
from s3queue import (
    Backoff,
    ConfigurationError,
    LeaseLost,
    PayloadError,
    Queue,
)
from s3queue.core.cursor import FINALIZE_GRACE, decode_cursor
from s3queue.core.layout import TIMER_SEAL_MARGIN, cursor_key
from s3queue.core.records import MAX_PAYLOAD_BYTES
from s3queue.errors import NotFound, StorageAuthError, StorageUnavailable
from s3queue.queue import probe_conditional_writes
from s3queue.storage import RetryingStorage, RetryPolicy, open_raw_storage, open_storage
from s3queue.storage.base import ObjectEntry, PutMode, StoredObject
from s3queue.storage.faults import Fault, FaultyStorage


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def queue(store_url: str, clock: Clock) -> AsyncIterator[Queue]:
    q = await Queue.open(
        store_url, "q", shards=1, clock=clock, skew_margin=2.0, backoff=Backoff(jitter=False)
    )
    yield q
    await q.close()


# --- leases and fencing ---------------------------------------------------------------------


async def test_stale_lease_cannot_ack_or_extend(store_url: str, clock: Clock) -> None:
    first = await Queue.open(store_url, "q", shards=1, clock=clock)
    second = await Queue.open(store_url, "q", clock=clock)
    mid = await first.enqueue({"x": 1})
    [stale] = await first.claim(1, visibility_timeout=10)
    clock.advance(10 + 2.5)  # past expiry and the skew margin
    [fresh] = await second.claim(1, visibility_timeout=10)
    assert fresh.id == mid
    assert fresh.attempt == 2
    with pytest.raises(LeaseLost):
        await first.ack(stale)
    with pytest.raises(LeaseLost):
        await first.extend(stale, 30)
    info = await second.get(mid)
    assert info is not None
    assert info.status == "processing"
    assert info.owner == second.owner
    await second.ack(fresh, result="second")
    info = await first.get(mid)
    assert info is not None
    assert info.status == "completed"
    assert info.result == "second"
    await first.close()
    await second.close()


async def test_expired_lease_is_not_recovered_within_the_skew_margin(
    queue: Queue, clock: Clock
) -> None:
    await queue.enqueue({"x": 1})
    [lease] = await queue.claim(1, visibility_timeout=10)
    clock.advance(11)  # expired, but within the 2 s margin
    assert await queue.claim(1, 10) == []
    with pytest.raises(LeaseLost):
        await queue.ack(lease)  # the holder may not act after expires_at either


async def test_extend_keeps_a_lease_alive(queue: Queue, clock: Clock) -> None:
    await queue.enqueue({"x": 1})
    [lease] = await queue.claim(1, visibility_timeout=10)
    clock.advance(8)
    await queue.extend(lease, 10)
    clock.advance(8)
    assert await queue.claim(1, 10) == []
    await queue.ack(lease)


async def test_release_makes_a_message_claimable_at_once_without_counting(queue: Queue) -> None:
    await queue.enqueue({"x": 1})
    [lease] = await queue.claim(1, 600)
    await queue.release(lease)
    [again] = await queue.claim(1, 600)
    assert again.id == lease.id
    assert again.attempt == 1


# --- retries, dead letters, redrive ------------------------------------------------------------


async def test_failures_back_off_then_dead_letter_with_history(queue: Queue, clock: Clock) -> None:
    mid = await queue.enqueue({"x": 1}, max_attempts=3)
    for attempt in (1, 2, 3):
        [lease] = await queue.claim(1, 30)
        assert lease.attempt == attempt
        failure = await queue.fail(lease, RuntimeError(f"boom {attempt}"))
        if attempt < 3:
            assert failure.status == "retry"
            assert await queue.claim(1, 30) == []  # not before the backoff delay
            assert failure.visible_at == clock.now + 2 ** (attempt - 1)
            clock.advance(2 ** (attempt - 1))
    assert failure.status == "dead"
    await queue.settle()
    [letter] = await queue.dead_letters()
    assert letter.id == mid
    assert letter.attempts == 3
    assert [e.message for e in letter.errors] == ["boom 1", "boom 2", "boom 3"]
    assert (await queue.stats()).dead == 1


async def test_non_retriable_failure_is_dead_at_once(queue: Queue) -> None:
    mid = await queue.enqueue({"x": 1})
    [lease] = await queue.claim(1, 30)
    failure = await queue.fail(lease, "bad input", retriable=False)
    assert failure.status == "dead"
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "dead"
    assert info.errors[0].message == "bad input"


async def test_lease_expiry_on_the_last_attempt_dead_letters(queue: Queue, clock: Clock) -> None:
    mid = await queue.enqueue({"x": 1}, max_attempts=1)
    await queue.claim(1, 5)
    clock.advance(8)
    assert await queue.claim(1, 5) == []
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "dead"
    assert info.errors[0].type == "LeaseExpired"


async def test_progress_outlives_the_job_that_recorded_it(queue: Queue) -> None:
    await queue.enqueue_many([{"n": 1}, {"n": 2}])
    done, failed = await queue.claim(2, 30)
    await queue.progress(done, {"step": 3, "of": 3})
    await queue.progress(failed, 0.25)
    await queue.ack(done)  # no result, first attempt: the progress alone is kept
    await queue.fail(failed, "gave up", retriable=False)
    await queue.settle()
    completed, dead = await queue.get(done.id), await queue.get(failed.id)
    assert completed is not None
    assert completed.status == "completed"
    assert completed.progress == {"step": 3, "of": 3}
    assert dead is not None
    assert dead.status == "dead"
    assert dead.progress == 0.25


async def test_redrive_returns_dead_letters_to_the_queue(queue: Queue) -> None:
    await queue.enqueue({"x": 1})
    [lease] = await queue.claim(1, 30)
    await queue.fail(lease, "nope", retriable=False)
    await queue.settle()
    [new_id] = await queue.redrive()
    assert await queue.dead_letters() == []
    [again] = await queue.claim(1, 30)
    assert again.payload == {"x": 1}
    assert again.attempt == 1
    assert again.id == new_id


async def dead(queue: Queue, payload: Any) -> str:
    """Enqueue ``payload`` and make it a dead letter; its id."""
    mid = await queue.enqueue(payload)
    leases = await queue.claim(10, 30)
    for lease in leases:
        await queue.fail(lease, "nope", retriable=False)
    await queue.settle()
    return mid


async def test_stats_count_what_purge_left_and_shards_sum_to_the_totals(store_url: str) -> None:
    q = await Queue.open(store_url, "counts", shards=3)
    try:
        await q.enqueue_many([{"n": n} for n in range(9)])
        leases = await q.claim(9, 30)
        for lease in leases[:5]:
            await q.ack(lease)
        for lease in leases[5:]:
            await q.fail(lease, "nope", retriable=False)
        await q.settle()
        s = await q.stats()
        assert (s.completed, s.dead) == (5, 4)
        for name in ("pending", "delayed", "processing", "completed", "dead", "retried"):
            assert sum(getattr(shard, name) for shard in s.shards) == getattr(s, name), name
        await q.redrive((await q.dead_letter_ids())[:1])
        s = await q.stats()
        assert (s.dead, sum(shard.dead for shard in s.shards)) == (3, 3)
        await q.purge()
        s = await q.stats()
        assert (s.pending, s.completed, s.dead) == (0, 0, 0)
        assert all(shard.completed == 0 and shard.dead == 0 for shard in s.shards)
    finally:
        await q.close()


async def test_a_redriven_id_reports_redriven_and_names_its_copy(queue: Queue) -> None:
    old = await dead(queue, {"x": 1})
    [new] = await queue.redrive([old])
    info = await queue.get(old)
    assert info is not None
    assert info.status == "redriven"
    assert info.redriven_to == new
    assert info.errors[0].message == "nope"  # the history of the dead letter stays readable
    copy = await queue.get(new)
    assert copy is not None
    assert copy.status == "pending"
    assert copy.payload == {"x": 1}


async def test_redrive_returns_new_ids_in_the_order_given(queue: Queue) -> None:
    first, second, third = [await dead(queue, {"n": n}) for n in range(3)]
    new = await queue.redrive([third, first, second])
    payloads = [(await queue.get(mid)).payload for mid in new]  # type: ignore[union-attr]
    assert payloads == [{"n": 2}, {"n": 0}, {"n": 1}]


async def test_redrive_of_an_id_that_is_not_dead_redrives_nothing(queue: Queue) -> None:
    letter = await dead(queue, {"x": 1})
    pending = await queue.enqueue({"y": 2})
    with pytest.raises(s3queue.QueueError, match=f"{pending} is not a dead letter"):
        await queue.redrive([letter, pending])
    assert [d.id for d in await queue.dead_letters()] == [letter]
    info = await queue.get(letter)
    assert info is not None
    assert info.status == "dead"


async def test_redriving_twice_names_the_first_copy(queue: Queue) -> None:
    letter = await dead(queue, {"x": 1})
    [new] = await queue.redrive([letter])
    with pytest.raises(s3queue.QueueError, match=f"already redriven to {new}"):
        await queue.redrive([letter])


async def test_a_redrive_that_died_after_copying_is_finished_without_a_second_copy(
    queue: Queue,
) -> None:
    letter = await dead(queue, {"x": 1})
    faulty = FaultyStorage(queue.storage)
    queue.storage = faulty  # the next redrive dies when deleting the letter
    faulty.inject(Fault("delete", when=lambda key: "/dead/" in key))
    with pytest.raises(s3queue.StorageError):
        await queue.redrive([letter])
    queue.storage = faulty.inner
    assert (await queue.get(letter)).status == "redriven"  # type: ignore[union-attr]
    [new] = await queue.redrive()  # the letter is still listed: it is finished, not copied again
    assert (await queue.get(letter)).redriven_to == new  # type: ignore[union-attr]
    assert len(await queue.claim(10, 30)) == 1


# --- enqueue options -------------------------------------------------------------------------


async def test_delay_hides_a_message_until_due(queue: Queue, clock: Clock) -> None:
    mid = await queue.enqueue({"x": 1}, delay=30)
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "delayed"
    assert await queue.claim(1, 30) == []
    clock.advance(30)
    [lease] = await queue.claim(1, 30)
    assert lease.id == mid


async def test_long_delay_goes_through_a_timer_bucket(queue: Queue, clock: Clock) -> None:
    mid = await queue.enqueue({"x": "later"}, delay=3600)
    assert "-T" in mid
    stats = await queue.stats()
    assert stats.delayed == 1
    assert stats.pending == 0
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "delayed"
    clock.advance(1800)
    assert await queue.claim(1, 30) == []
    clock.advance(1800)
    [lease] = await queue.claim(1, 30)
    assert lease.id == mid
    await queue.ack(lease)
    clock.advance(TIMER_SEAL_MARGIN + 120)
    await queue.claim(1, 30)  # seals the bucket
    cursor = decode_cursor((await queue.storage.get(cursor_key("q", 0))).data, "")  # type: ignore[union-attr]
    assert cursor.timers == {}


async def test_a_producer_forgets_timer_buckets_long_sealed(queue: Queue, clock: Clock) -> None:
    first = await queue.enqueue({"x": 1}, delay=3600)
    producer = queue.producer
    remembered = set(producer._next_seq)
    assert any(bucket >= 0 for _, bucket in remembered)
    clock.advance(3600 + TIMER_SEAL_MARGIN + 600)
    second = await queue.enqueue({"x": 2}, delay=3600)
    assert first != second
    assert not remembered & set(producer._next_seq)
    assert not remembered & set(producer._locks)
    assert not remembered & producer._registered


async def test_higher_priority_runs_first(queue: Queue) -> None:
    await queue.enqueue_many([{"p": 0}] * 3)
    await queue.enqueue({"p": 9}, priority=9)
    await queue.enqueue({"p": 5}, priority=5)
    leases = await queue.claim(5, 30)
    assert [lease.payload["p"] for lease in leases] == [9, 5, 0, 0, 0]


async def test_dedup_key_returns_the_first_id_until_retention_ends(
    queue: Queue, clock: Clock
) -> None:
    first = await queue.enqueue({"x": 1}, dedup_key="order-7")
    assert await queue.enqueue({"x": 2}, dedup_key="order-7") == first
    [lease] = await queue.claim(10, 30)
    await queue.ack(lease)
    await queue.settle()
    assert await queue.enqueue({"x": 3}, dedup_key="order-7") == first
    clock.advance(queue.settings.dedup_retention + 1)
    again = await queue.enqueue({"x": 4}, dedup_key="order-7")
    assert again != first


async def test_concurrent_enqueues_with_one_dedup_key_store_one_message(queue: Queue) -> None:
    ids = await asyncio.gather(*(queue.enqueue({"n": n}, dedup_key="same") for n in range(10)))
    assert len(set(ids)) == 1
    assert (await queue.stats()).pending == 1


async def test_concurrent_enqueues_share_segment_writes(queue: Queue) -> None:
    queue.storage.counts.reset()
    ids = await asyncio.gather(*(queue.enqueue({"n": n}) for n in range(50)))
    assert len(set(ids)) == 50
    assert queue.storage.counts.conditional_put < 10


async def test_one_process_never_races_itself_for_a_segment_number(queue: Queue) -> None:
    queue.storage.counts.reset()
    batches = [[{"b": b, "n": n} for n in range(50)] for b in range(8)]
    ids = await asyncio.gather(*(queue.enqueue_many(batch) for batch in batches))
    assert len({mid for batch in ids for mid in batch}) == 400
    # One LIST finds the end of the log; after that this process knows it.
    assert queue.storage.counts.list <= 1
    assert queue.storage.counts.precondition_failed == 0


async def test_lingering_acks_share_the_write_of_the_next_claim(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(20)])
    first = await queue.claim(10, 30)
    queue.storage.counts.reset()
    acks = [asyncio.create_task(queue.ack(lease, linger=3600)) for lease in first]
    await asyncio.sleep(0)  # the acks are queued, waiting for company
    second = await queue.claim(10, 30)
    await asyncio.gather(*acks)
    assert len(second) == 10
    assert queue.storage.counts.conditional_put == 1
    assert (await queue.stats()).completed == 10


async def test_a_lingering_ack_alone_is_written_when_its_linger_ends(queue: Queue) -> None:
    await queue.enqueue({"n": 1})
    [lease] = await queue.claim(1, 30)
    await queue.ack(lease, linger=0.01)
    assert (await queue.stats()).completed == 1


# --- bad input ------------------------------------------------------------------------------


async def test_unserialisable_payload_writes_nothing(queue: Queue) -> None:
    with pytest.raises(PayloadError, match="not JSON-serialisable"):
        await queue.enqueue({"when": object()})
    with pytest.raises(PayloadError):
        await queue.enqueue_many([{"ok": 1}, {"bad": object()}])
    assert (await queue.stats()).pending == 0


async def test_oversized_payload_is_refused(queue: Queue) -> None:
    with pytest.raises(PayloadError, match="over the limit") as info:
        await queue.enqueue("x" * (MAX_PAYLOAD_BYTES + 1))
    assert info.value.suggestion


@pytest.mark.parametrize("name", ["", "a/b", "-lead", "x" * 81, "sp ace"])
async def test_invalid_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        await Queue.open("memory://names", name)


async def test_reopening_with_other_shards_is_refused(store_url: str) -> None:
    q = await Queue.open(store_url, "fixed", shards=2)
    await q.close()
    with pytest.raises(ConfigurationError, match="has 2 shards"):
        await Queue.open(store_url, "fixed", shards=3)


async def test_malformed_message_id_is_refused(queue: Queue) -> None:
    with pytest.raises(ConfigurationError, match="invalid message id"):
        await queue.get("not-an-id")
    assert await queue.get("0-L999-0") is None


class IgnoresConditions:
    """A store that accepts If-Match / If-None-Match and ignores them."""

    def __init__(self) -> None:
        self.inner = open_raw_storage("memory://")

    url = "memory://ignorant"

    @property
    def counts(self) -> Any:
        return self.inner.counts

    async def get(self, key: str) -> StoredObject | None:
        return await self.inner.get(key)

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        return await self.inner.put(key, data)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def delete_many(self, keys: Any) -> None:
        await self.inner.delete_many(keys)

    async def list_prefixes(self, prefix: str) -> list[str]:
        return await self.inner.list_prefixes(prefix)

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        return await self.inner.list(prefix, start_after=start_after, limit=limit)

    async def close(self) -> None:
        return None


async def test_a_store_that_ignores_conditions_is_refused_before_anything_is_written() -> None:
    store = IgnoresConditions()
    with pytest.raises(ConfigurationError, match="If-None-Match"):
        await Queue.open(store, "q")
    assert await store.list("") == []


def denied() -> StorageAuthError:
    return StorageAuthError("access denied (injected)", status_code=403)


async def test_a_probe_that_cannot_delete_its_object_says_so() -> None:
    """The probe promises to leave nothing behind: a store that lets it write but
    not delete (an identity without delete rights) is reported, not left with it."""
    store = FaultyStorage(open_raw_storage("memory://"))
    store.inject(Fault("delete", error=denied))
    with pytest.raises(StorageAuthError, match="access denied"):
        await probe_conditional_writes(store, "q")
    assert [entry.key for entry in await store.list("")] != []


async def test_a_failed_probe_reports_its_own_failure_not_the_cleanup_s() -> None:
    store = FaultyStorage(open_raw_storage("memory://"))
    store.inject(Fault("put", error=lambda: NotFound("no such bucket (injected)")))
    store.inject(Fault("delete", error=denied))
    with pytest.raises(NotFound, match="no such bucket"):
        await probe_conditional_writes(store, "q")


async def test_opening_a_missing_queue_read_only_creates_nothing(store_url: str) -> None:
    q = await Queue.open(store_url, "emails", shards=1)
    await q.close()
    with pytest.raises(
        s3queue.QueueNotFound, match=r"no queue named 'emials'.*queues here: emails"
    ):
        await Queue.open(store_url, "emials", create=False)
    storage = open_storage(store_url)
    assert {e.key.split("/")[0] for e in await storage.list("")} == {"emails"}
    await storage.close()


# --- crash points -----------------------------------------------------------------------------


async def test_cursor_write_that_landed_but_timed_out_is_not_applied_twice(
    store_url: str, clock: Clock
) -> None:
    faulty = FaultyStorage(open_raw_storage(store_url))
    storage = RetryingStorage(faulty, RetryPolicy(initial=0.001, max_delay=0.002))
    q = await Queue.open(storage, "amb", shards=1, clock=clock)
    await q.enqueue_many([{"n": n} for n in range(4)])
    faulty.inject(Fault("put", after=True, when=lambda key: key.endswith("/cursor")))
    leases = await q.claim(2, 30)
    assert len(leases) == 2
    for lease in leases:
        await q.ack(lease)
    rest = await q.claim(10, 30)
    assert sorted(lease.payload["n"] for lease in leases + rest) == [0, 1, 2, 3]
    assert faulty.injected == 1
    await q.close()


async def test_side_records_lost_in_a_crash_are_written_by_the_next_committer(
    store_url: str, clock: Clock
) -> None:
    faulty = FaultyStorage(open_raw_storage(store_url))
    storage = RetryingStorage(faulty, RetryPolicy(attempts=1))
    q = await Queue.open(storage, "crash", shards=1, clock=clock)
    mid = await q.enqueue({"x": 1})
    [lease] = await q.claim(1, 30)
    # The dead letter's PUT fails as if the process died right after its commit.
    faulty.inject(
        Fault("put", error=lambda: StorageUnavailable("down"), when=lambda k: "/dead/" in k)
    )
    await q.fail(lease, "fatal", retriable=False)
    await q.settle()
    assert await q.dead_letters() == []
    info = await q.get(mid)
    assert info is not None
    assert info.status == "dead"
    other = await Queue.open(store_url, "crash", clock=clock)
    clock.advance(FINALIZE_GRACE + 1)
    await other.claim(1, 30)
    await other.settle()
    assert [letter.id for letter in await other.dead_letters()] == [mid]
    await q.close()
    await other.close()


# --- size, purge, blocking client ----------------------------------------------------------------


async def test_cursor_stays_small_under_a_large_backlog(store_url: str, backend: str) -> None:
    if backend != "memory":
        pytest.skip("one backend is enough for a size property; the others are slower")
    q = await Queue.open(store_url, "big", shards=1)
    for start in range(0, 200_000, 1000):
        await q.enqueue_many([{"n": n} for n in range(start, start + 1000)])
    leases = await q.claim(100, 30)
    for lease in leases[:50]:
        await q.ack(lease)
    stored = await q.storage.get(cursor_key("big", 0))
    assert stored is not None
    assert len(stored.data) < 64 * 1024
    stats = await q.stats()
    assert stats.pending == 200_000 - 100
    assert stats.processing == 50
    await q.close()


async def test_purge_empties_the_queue(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(10)])
    await queue.claim(3, 30)
    await queue.purge()
    stats = await queue.stats()
    assert (stats.pending, stats.processing, stats.dead) == (0, 0, 0)
    assert await queue.claim(10, 30) == []
    mid = await queue.enqueue({"after": True})
    [lease] = await queue.claim(10, 30)
    assert lease.id == mid


def test_blocking_client_round_trip(store_url: str) -> None:
    with s3queue.connect(store_url, "sync", shards=1) as q:
        mid = q.enqueue({"x": 1})
        [lease] = q.claim(1, 30)
        q.ack(lease, result=[1, 2])
        info = q.get(mid)
        assert info is not None
        assert info.status == "completed"
        assert info.result == [1, 2]
        assert q.stats().completed == 1
