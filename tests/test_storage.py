"""The storage contract: every backend (memory, local directory, S3 served by moto
and by SeaweedFS) must behave the same, because the queue's guarantees rest on these
semantics."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from s3queue.errors import (
    AmbiguousWrite,
    ConfigurationError,
    PreconditionFailed,
    StorageUnavailable,
    Throttled,
)
from s3queue.storage import (
    RetryingStorage,
    RetryPolicy,
    Storage,
    UpdateVersion,
    open_raw_storage,
    open_storage,
)
from s3queue.storage.faults import Fault, FaultyStorage, slow_down
from tests.conftest import SERVERS

FAST_RETRY = RetryPolicy(attempts=4, initial=0.001, max_delay=0.005)
TRIALS = 20
RACERS = 8
#: Stores reached through the S3 API: the ETag of a single-part PUT is the MD5 of
#: its bytes, and one DeleteObjects request removes up to 1,000 keys.
S3_API = {"s3", "seaweedfs"}


@pytest.fixture(params=["memory", "file", *SERVERS])
def backend(request: pytest.FixtureRequest) -> str:
    """The contract is what the queue needs of any store, so it runs on every
    server, not only on the one the rest of the suite uses."""
    return str(request.param)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Storage]:
    storage = open_storage(store_url)
    yield storage
    await storage.close()


def key() -> str:
    return f"k/{uuid.uuid4().hex}"


async def test_missing_key_reads_as_none(store: Storage) -> None:
    assert await store.get(key()) is None


async def test_put_then_get_returns_bytes_and_etag(store: Storage) -> None:
    k = key()
    etag = await store.put(k, b"hello")
    got = await store.get(k)
    assert got is not None
    assert got.data == b"hello"
    assert got.etag == etag


async def test_create_if_absent_race_has_exactly_one_winner(store: Storage) -> None:
    async def race(k: str) -> None:
        outcomes = await asyncio.gather(
            *(store.put(k, f"writer-{i}".encode(), mode="create") for i in range(RACERS)),
            return_exceptions=True,
        )
        winners = [i for i, o in enumerate(outcomes) if isinstance(o, str)]
        assert len(winners) == 1
        assert all(isinstance(o, PreconditionFailed) for o in outcomes if not isinstance(o, str))
        stored = await store.get(k)
        assert stored is not None
        assert stored.data == f"writer-{winners[0]}".encode()

    # All trials at once: a store that makes contended writes wait (SeaweedFS holds
    # them for whole seconds) waits for every key together.
    await asyncio.gather(*(race(key()) for _ in range(TRIALS)))


async def test_compare_and_swap_race_has_exactly_one_winner(store: Storage) -> None:
    async def race(k: str) -> None:
        base = await store.put(k, b"v0")
        outcomes = await asyncio.gather(
            *(store.put(k, f"v1-{i}".encode(), mode=UpdateVersion(base)) for i in range(RACERS)),
            return_exceptions=True,
        )
        winners = [i for i, o in enumerate(outcomes) if isinstance(o, str)]
        assert len(winners) == 1
        stored = await store.get(k)
        assert stored is not None
        assert stored.data == f"v1-{winners[0]}".encode()

    await asyncio.gather(*(race(key()) for _ in range(TRIALS)))


async def test_rewriting_equal_bytes_changes_the_etag_unless_it_is_the_md5(
    store: Storage, backend: str
) -> None:
    """ABA: a writer holding the ETag of an old version succeeds if the object's
    bytes have come back to that version's and the ETag is derived from them.

    Through the S3 API (moto, SeaweedFS and AWS alike) the ETag of a single-part
    PUT is the MD5 of the bytes, so equal bytes give an equal ETag. s3queue therefore
    does not rely on ETags changing: every body it writes under UpdateVersion
    carries something that never repeats (a version counted up, a commit token, a
    nonce: see test_cursor_bodies_never_repeat). The backends we write ourselves
    give every write a fresh ETag."""
    k = key()
    first = await store.put(k, b"same")
    second = await store.put(k, b"same", mode=UpdateVersion(first))
    if backend in S3_API:
        assert second == first
        # The hazard itself: a writer that read the first version is not stopped.
        await store.put(k, b"stale", mode=UpdateVersion(first))
        return
    assert second != first
    with pytest.raises(PreconditionFailed):
        await store.put(k, b"stale", mode=UpdateVersion(first))


async def test_cursor_bodies_never_repeat(store_url: str) -> None:
    from s3queue.queue import Queue

    q = await Queue.open(store_url, "aba", shards=1)
    bodies: set[bytes] = set()
    key_ = "aba/shards/0000/cursor"
    for n in range(5):
        await q.enqueue({"n": n})
        leases = await q.claim(1, 30)
        stored = await q.storage.get(key_)
        assert stored is not None
        assert stored.data not in bodies
        bodies.add(stored.data)
        await q.ack(leases[0])
        stored = await q.storage.get(key_)
        assert stored is not None
        assert stored.data not in bodies
        bodies.add(stored.data)
    await q.close()


async def test_if_match_on_a_missing_key_fails(store: Storage) -> None:
    with pytest.raises(PreconditionFailed):
        await store.put(key(), b"x", mode=UpdateVersion('"nope"'))


async def test_unconditional_put_overwrites(store: Storage) -> None:
    k = key()
    await store.put(k, b"one")
    await store.put(k, b"two")
    got = await store.get(k)
    assert got is not None
    assert got.data == b"two"


async def test_list_is_ordered_filtered_and_resumable(store: Storage) -> None:
    root = f"l{uuid.uuid4().hex[:8]}"
    keys = [f"{root}/a/{n:03d}" for n in (5, 1, 3)] + [f"{root}/ab/x", f"{root}/b/1"]
    for k in keys:
        await store.put(k, b"x")
    listed = [e.key for e in await store.list(f"{root}/a/")]
    assert listed == [f"{root}/a/001", f"{root}/a/003", f"{root}/a/005"]
    # A prefix is a plain string prefix, not a directory.
    assert [e.key for e in await store.list(f"{root}/a")] == [*listed, f"{root}/ab/x"]
    after = await store.list(f"{root}/a/", start_after=f"{root}/a/001")
    assert [e.key for e in after] == [f"{root}/a/003", f"{root}/a/005"]
    # start_after need not be an existing key.
    between = await store.list(f"{root}/a/", start_after=f"{root}/a/002", limit=1)
    assert [e.key for e in between] == [f"{root}/a/003"]
    assert all(e.size == 1 for e in await store.list(f"{root}/"))


async def test_list_returns_more_than_one_page(store: Storage) -> None:
    root = f"p{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(32)

    async def write(n: int) -> None:
        async with gate:
            await store.put(f"{root}/{n:05d}", b"")

    await asyncio.gather(*(write(n) for n in range(1100)))
    listed = [e.key for e in await store.list(f"{root}/")]
    assert listed == [f"{root}/{n:05d}" for n in range(1100)]


async def test_delete_is_idempotent(store: Storage) -> None:
    k = key()
    await store.delete(k)
    await store.put(k, b"x")
    await store.delete(k)
    assert await store.get(k) is None
    assert k not in [e.key for e in await store.list("k/")]


async def test_delete_many_removes_every_key_in_batches(store: Storage, backend: str) -> None:
    root = f"d{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(32)

    async def write(n: int) -> None:
        async with gate:
            await store.put(f"{root}/{n:05d}", b"x")

    await asyncio.gather(*(write(n) for n in range(1100)))
    kept = f"{root}/keep"
    await store.put(kept, b"y")
    store.counts.reset()
    # Missing keys among them are not an error.
    await store.delete_many([f"{root}/{n:05d}" for n in range(1105)])
    assert [e.key for e in await store.list(f"{root}/")] == [kept]
    # S3 deletes 1,000 keys per request; Azure 256 per blob batch, but fails a batch
    # holding a missing key, whose keys are then deleted one by one (four full
    # batches, then 81 keys with the 5 missing ones: 1 + 81); the others pay one
    # request per key.
    expected = 2 if backend in S3_API else (4 + 1 + 81 if backend == "azure" else 1105)
    assert store.counts.delete == expected
    await store.delete_many([])


async def test_listing_says_when_each_object_was_written(store: Storage) -> None:
    k = key()
    written = await store.put(k, b"x")
    stored = await store.get(k)
    assert stored is not None
    assert stored.etag == written
    (entry,) = [e for e in await store.list("k/") if e.key == k]
    assert entry.modified is not None
    assert stored.modified is not None
    # Both from the store's clock (S3 gives whole seconds).
    assert abs(entry.modified - stored.modified) <= 1.0


async def test_requests_are_counted_by_kind(store: Storage) -> None:
    k = key()
    store.counts.reset()
    etag = await store.put(k, b"1")
    await store.put(k, b"2", mode=UpdateVersion(etag))
    with pytest.raises(PreconditionFailed):
        await store.put(k, b"3", mode="create")
    await store.get(k)
    await store.list("k/")
    await store.delete(k)
    snap = store.counts.snapshot()
    expected = {"put": 1, "conditional_put": 2, "get": 1, "list": 1, "delete": 1}
    assert {kind: snap[kind] for kind in expected} == expected
    assert snap["precondition_failed"] == 1
    assert snap["total"] == 6


async def test_throttling_is_retried_and_counted(store_url: str) -> None:
    faulty = FaultyStorage(open_raw_storage(store_url))
    faulty.inject(Fault("put", times=3, error=slow_down))
    store = RetryingStorage(faulty, FAST_RETRY)
    k = key()
    await store.put(k, b"x")
    assert (await store.get(k)) is not None
    assert store.counts.throttled == 3
    faulty.inject(Fault("put", times=10, error=slow_down))
    with pytest.raises(Throttled):
        await store.put(key(), b"y")
    await store.close()


async def test_ambiguous_write_that_landed_is_recognised(store_url: str) -> None:
    """The PUT applies but the caller sees a failure; the retry gets 412; re-reading
    finds our own bytes, so the write is reported as done."""
    faulty = FaultyStorage(open_raw_storage(store_url))
    store = RetryingStorage(faulty, FAST_RETRY)
    k = key()
    base = await store.put(k, b"v0")
    faulty.inject(Fault("put", after=True))
    etag = await store.put(k, b"v1-mine", mode=UpdateVersion(base))
    got = await store.get(k)
    assert got is not None
    assert got.data == b"v1-mine"
    assert got.etag == etag
    await store.close()


async def test_ambiguous_write_overwritten_since_is_reported(store_url: str) -> None:
    raw = open_raw_storage(store_url)
    faulty = FaultyStorage(raw)
    store = RetryingStorage(faulty, FAST_RETRY)
    k = key()
    base = await store.put(k, b"v0")

    def overwritten() -> StorageUnavailable:
        # Runs after our write landed: another writer commits on top before we retry.
        asyncio.get_running_loop().create_task(raw.put(k, b"v2-theirs"))
        return StorageUnavailable("connection reset (injected)")

    faulty.inject(Fault("put", after=True, error=overwritten))
    # Let the competing write land before the retry by slowing the retry a little.
    store.policy = RetryPolicy(attempts=4, initial=0.05, max_delay=0.05)
    with pytest.raises(AmbiguousWrite):
        await store.put(k, b"v1-mine", mode=UpdateVersion(base))
    await store.close()


async def test_large_objects_round_trip(store: Storage) -> None:
    k = key()
    blob = os.urandom(32 * 1024 * 1024)
    etag = await store.put(k, blob, mode="create")
    got = await store.get(k)
    assert got is not None
    assert hashlib.sha256(got.data).digest() == hashlib.sha256(blob).digest()
    await store.put(k, blob[:1024], mode=UpdateVersion(etag))
    await store.delete(k)


def test_unknown_scheme_names_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="unknown storage scheme") as info:
        open_storage("ftp://host/x")
    assert info.value.suggestion
    assert "s3://" in info.value.suggestion


def test_url_without_scheme_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="no scheme"):
        open_storage("/var/lib/queue")


def test_unsafe_keys_are_rejected() -> None:
    store = open_storage("memory://")
    for bad in ("../etc/passwd", "/abs", "a//b", "a/.tmp-x", ""):
        with pytest.raises(ConfigurationError):
            asyncio.run(store.get(bad))


async def test_list_prefixes_names_the_directories_directly_under_a_prefix(
    store: Storage, backend: str
) -> None:
    root = f"p{uuid.uuid4().hex[:8]}"
    for k in ("a/x", "a/y/z", "b/c", "b/d", "top", "a-b/q"):
        await store.put(f"{root}/{k}", b"x")
    assert await store.list_prefixes(f"{root}/") == [f"{root}/a-b/", f"{root}/a/", f"{root}/b/"]
    assert await store.list_prefixes(f"{root}/a/") == [f"{root}/a/y/"]
    assert await store.list_prefixes(f"{root}/b/") == []
    assert await store.list_prefixes(f"{root}/none/") == []
    await store.delete(f"{root}/a/y/z")
    # A directory emptied by deletes holds no object, so is no prefix; but SeaweedFS
    # keeps its folders (which is why the catalog reads each name's queue.json).
    emptied = [f"{root}/a/y/"] if backend == "seaweedfs" else []
    assert await store.list_prefixes(f"{root}/a/") == emptied
    assert f"{root}/" in await store.list_prefixes("")
