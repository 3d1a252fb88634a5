"""The local-directory backend's own promises, beyond the storage contract: its lock
files are a fixed set of stripes, whatever the number of keys; a stripe excludes
threads of one process as well as other processes; deletes remove emptied directories
without failing the writes beside them; and per-key lock files left by earlier
versions are deleted when a directory is opened, a bounded batch at a time."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import pytest

from s3queue.errors import PreconditionFailed
from s3queue.storage import local
from s3queue.storage.local import LOCK_DIR, STRIPES, LocalStorage, stripe_name

RACERS = 6
#: Keys raced on per test: half of them share one stripe, half have a stripe each.
SHARED = 4
#: Seconds racers wait for each other before the race counts as failed.
BARRIER_TIMEOUT = 30


def open_store(root: Path) -> LocalStorage:
    return LocalStorage.from_url(f"file://{root}")


def stripes() -> set[str]:
    return {f"stripe-{n:02x}" for n in range(STRIPES)}


def keys_sharing_a_stripe(count: int) -> list[str]:
    first = "race/shared/0"
    found = [first]
    n = 1
    while len(found) < count:
        candidate = f"race/shared/{n}"
        if stripe_name(candidate) == stripe_name(first):
            found.append(candidate)
        n += 1
    return found


def keys_on_distinct_stripes(count: int, taken: str) -> list[str]:
    found: dict[str, str] = {}
    n = 0
    while len(found) < count:
        candidate = f"race/own/{n}"
        name = stripe_name(candidate)
        if name != taken and name not in found:
            found[name] = candidate
        n += 1
    return list(found.values())


@pytest.fixture
def race_keys() -> list[str]:
    shared = keys_sharing_a_stripe(SHARED)
    return shared + keys_on_distinct_stripes(SHARED, stripe_name(shared[0]))


def race(
    store: LocalStorage, keys: list[str], racer: int, barrier: threading.Barrier | ProcessBarrier
) -> list[str]:
    """Create each of ``keys`` if absent, starting with the other racers; the keys won."""

    async def run() -> list[str]:
        won = []
        for key in keys:
            barrier.wait()
            try:
                await store.put(key, f"racer-{racer}".encode(), mode="create")
            except PreconditionFailed:
                continue
            won.append(key)
        return won

    return asyncio.run(run())


def race_in_process(
    root: str,
    keys: list[str],
    racer: int,
    barrier: ProcessBarrier,
    results: multiprocessing.Queue[tuple[int, list[str]]],
) -> None:
    results.put((racer, race(open_store(Path(root)), keys, racer, barrier)))


def assert_one_winner_each(root: Path, keys: list[str], wins: dict[int, list[str]]) -> None:
    store = open_store(root)
    for key in keys:
        winners = [racer for racer, won in wins.items() if key in won]
        assert len(winners) == 1, (key, winners)
        stored = asyncio.run(store.get(key))
        assert stored is not None
        assert stored.data == f"racer-{winners[0]}".encode()


async def test_lock_files_are_a_fixed_set_of_stripes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    keys = [f"q/shards/{n % 7:04d}/seg/{n:06d}" for n in range(2000)]
    gate = asyncio.Semaphore(32)

    async def write_then_delete(key: str) -> None:
        async with gate:
            await store.put(key, b"x", mode="create")
            await store.delete(key)

    await asyncio.gather(*(write_then_delete(k) for k in keys))
    left = set(os.listdir(tmp_path / LOCK_DIR))
    assert left <= stripes()
    assert len(left) > STRIPES // 2  # 2,000 keys spread over the stripes


async def test_deleting_the_last_key_removes_its_empty_directories(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await store.put("q/shards/0001/seg/a", b"x")
    await store.put("q/shards/0002/seg/b", b"x")
    await store.delete("q/shards/0001/seg/a")
    assert not (tmp_path / "q" / "shards" / "0001").exists()
    assert (tmp_path / "q" / "shards" / "0002" / "seg" / "b").exists()
    await store.delete("q/shards/0002/seg/b")
    assert sorted(os.listdir(tmp_path)) == [LOCK_DIR]


async def test_a_write_lands_while_deletes_empty_its_directory(tmp_path: Path) -> None:
    """A delete removes its key's directory once empty, holding no lock of the keys
    being written there: a write that created the directory just before still lands."""
    store = open_store(tmp_path)
    gate = asyncio.Semaphore(32)

    async def write_then_delete(n: int) -> None:
        key = f"q/{n % 4}/seg/{n:06d}"
        async with gate:
            await store.put(key, b"x", mode="create")
            await store.delete(key)

    await asyncio.gather(*(write_then_delete(n) for n in range(4000)))
    assert sorted(os.listdir(tmp_path)) == [LOCK_DIR]


def test_a_stripe_held_by_one_thread_excludes_another_descriptor(tmp_path: Path) -> None:
    """flock belongs to an open file description: each lock call opens its own, so
    threads of one process exclude each other, as processes do."""
    store = open_store(tmp_path)
    holder, other = keys_sharing_a_stripe(2)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._locked(holder):
            entered.set()
            release.wait()

    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(hold)
        fd = os.open(tmp_path / LOCK_DIR / stripe_name(other), os.O_RDWR | os.O_CREAT)
        try:
            assert entered.wait(10)
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            release.set()
            holding.result()
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with its descriptor
        finally:
            release.set()
            os.close(fd)


def test_create_race_between_threads_has_one_winner_per_key(
    tmp_path: Path, race_keys: list[str]
) -> None:
    # One store shared by the threads, as a process's threads share it.
    store = open_store(tmp_path)
    barrier = threading.Barrier(RACERS, timeout=BARRIER_TIMEOUT)
    with ThreadPoolExecutor(RACERS) as pool:
        futures = [pool.submit(race, store, race_keys, r, barrier) for r in range(RACERS)]
        wins = {r: f.result() for r, f in enumerate(futures)}
    assert_one_winner_each(tmp_path, race_keys, wins)


def test_create_race_between_processes_has_one_winner_per_key(
    tmp_path: Path, race_keys: list[str]
) -> None:
    context = multiprocessing.get_context("spawn")
    # A racer that fails breaks the barrier, so the others stop too.
    barrier = context.Barrier(RACERS, timeout=BARRIER_TIMEOUT)
    results: multiprocessing.Queue[tuple[int, list[str]]] = context.Queue()
    racers = [
        context.Process(
            target=race_in_process,
            args=(str(tmp_path), race_keys, r, barrier, results),
            daemon=True,
        )
        for r in range(RACERS)
    ]
    for process in racers:
        process.start()
    wins = dict(results.get(timeout=2 * BARRIER_TIMEOUT) for _ in racers)
    for process in racers:
        process.join(30)
        assert process.exitcode == 0
    assert_one_winner_each(tmp_path, race_keys, wins)


def test_opening_deletes_legacy_lock_files_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "LEGACY_LOCKS_PER_OPEN", 10)
    locks = tmp_path / LOCK_DIR
    locks.mkdir()
    for n in range(25):
        (locks / f"{n:040x}").touch()
    kept = {"stripe-00", "README", "abc"}
    for name in kept:
        (locks / name).touch()
    for remaining in (15, 5, 0, 0):
        open_store(tmp_path)
        assert len(set(os.listdir(locks)) - kept) == remaining
    assert set(os.listdir(locks)) == kept
