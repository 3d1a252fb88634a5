"""Corrupt and foreign objects: each is named, set aside or skipped, and the rest of
the queue keeps working. Nothing is lost silently."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

import s3queue
from s3queue import Queue
from s3queue.core import layout
from s3queue.core.layout import cursor_key, log_key, parse_message_id, settings_key, timers_prefix
from s3queue.errors import CorruptData
from s3queue.storage import Storage, open_storage


@pytest.fixture
async def storage(store_url: str) -> AsyncIterator[Storage]:
    store = open_storage(store_url)
    yield store
    await store.close()


async def fresh(storage: Storage, name: str = "q") -> Queue:
    """Another process's view: nothing cached."""
    return await Queue.open(storage, name, verify_store=False)


async def test_a_garbage_segment_is_set_aside_and_the_shard_goes_on(storage: Storage) -> None:
    q = await Queue.open(storage, "q", shards=1)
    before = await q.enqueue_many([{"n": 1}, {"n": 2}])
    broken = await q.enqueue({"n": 3})
    after = await q.enqueue({"n": 4})
    key = log_key("q", 0, parse_message_id(broken).segment.seq)
    await storage.put(key, b"\x00 not json")
    worker = await fresh(storage)
    leases = await worker.claim(10, 30)
    assert sorted(lease.id for lease in leases) == sorted([*before, after])
    stats = await worker.stats()
    [problem] = stats.problems
    assert problem.key == key
    assert "set aside" in problem.what
    with pytest.raises(CorruptData, match=f"{broken} cannot be told.*set aside"):
        await worker.get(broken)
    kept = await storage.get(f"q/quarantine/0000-{parse_message_id(broken).segment}.data")
    assert kept is not None
    assert kept.data == b"\x00 not json"
    await q.close()
    await worker.close()


async def test_a_truncated_segment_in_the_window_loses_only_its_messages(
    storage: Storage,
) -> None:
    q = await Queue.open(storage, "q", shards=1)
    first = await q.enqueue_many([{"n": n} for n in range(3)])
    [lease] = await q.claim(1, 30)  # the window now holds the first segment
    await q.ack(lease)
    second = await q.enqueue({"n": 9})
    key = log_key("q", 0, parse_message_id(first[0]).segment.seq)
    stored = await storage.get(key)
    assert stored is not None
    await storage.put(key, stored.data[: len(stored.data) // 2])
    other = await fresh(storage)  # has not read that segment: finds it truncated
    leases = await other.claim(10, 30)
    assert [lease.id for lease in leases] == [second]
    [problem] = (await other.stats()).problems
    assert "2 unfinished messages lost" in problem.what
    await q.close()
    await other.close()


async def test_a_deleted_segment_the_cursor_needs_is_set_aside(storage: Storage) -> None:
    q = await Queue.open(storage, "q", shards=1)
    gone = await q.enqueue_many([{"n": 1}, {"n": 2}])
    [held] = await q.claim(1, 30)  # the segment is in the window now
    await storage.delete(log_key("q", 0, parse_message_id(gone[0]).segment.seq))
    kept = await q.enqueue({"n": 3})
    other = await fresh(storage)
    assert [lease.id for lease in await other.claim(10, 30)] == [kept]
    [problem] = (await other.stats()).problems
    assert "missing" in problem.what
    assert "2 unfinished messages lost" in problem.what
    with pytest.raises(s3queue.LeaseLost):
        await q.ack(held)  # its message is gone from the queue: the holder is told
    await q.close()
    await other.close()


async def test_a_garbage_cursor_stops_only_its_shard(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    q = await Queue.open(storage, "q", shards=2)
    await q.enqueue_many([{"n": n} for n in range(600)])  # both shards
    await storage.put(cursor_key("q", 1), b'{"format": 1, "shard": "x"}')
    other = await fresh(storage)
    with caplog.at_level(logging.ERROR, "s3queue.queue"):
        leases = await other.claim(1000, 30)
    assert leases
    assert all(lease.id.startswith("0-") for lease in leases)
    assert "shard 1 of queue 'q' is out of use" in caplog.text
    assert "s3queue doctor q" in caplog.text
    stats = await other.stats()
    [problem] = stats.problems
    assert problem.key == cursor_key("q", 1)
    assert "expected a JSON object" in problem.what
    await q.close()
    await other.close()


async def test_foreign_keys_in_the_log_and_timers_are_ignored(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    layout._warned.clear()  # warned once per key and process: earlier tests warned
    q = await Queue.open(storage, "q", shards=1)
    await q.enqueue({"n": 1})
    await storage.put("q/shards/0000/log/notes.txt", b"hello")
    await storage.put(f"{timers_prefix('q', 0)}readme", b"hello")
    with caplog.at_level(logging.WARNING, "s3queue.layout"):
        stats = await q.stats()
        await q.enqueue({"n": 2}, delay=600)
        await q.purge()
    assert stats.pending == 1
    assert "ignoring q/shards/0000/log/notes.txt: not an object s3queue wrote" in caplog.text
    assert caplog.text.count("notes.txt") == 1  # once per key
    await q.close()


async def test_garbage_settings_name_their_key(storage: Storage) -> None:
    await storage.put(settings_key("q"), b"[1, 2")
    with pytest.raises(CorruptData, match=r"corrupt queue settings at q/queue\.json"):
        await Queue.open(storage, "q")


# --- s3queue doctor --------------------------------------------------------------------------


def doctor(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3queue", "--url", url, "doctor", "q", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_doctor_finds_nothing_wrong_with_a_healthy_queue(store_url: str) -> None:
    if store_url.startswith("memory://"):
        pytest.skip("the doctor runs in another process: memory:// is per process")
    q = await Queue.open(store_url, "q", shards=2)
    await q.enqueue_many([{"n": n} for n in range(5)])
    await q.close()
    result = doctor(store_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"problems": [], "fixed": []}


async def test_doctor_lists_problems_and_fixes_them(store_url: str) -> None:
    if store_url.startswith("memory://"):
        pytest.skip("the doctor runs in another process: memory:// is per process")
    storage = open_storage(store_url)
    q = await Queue.open(storage, "q", shards=2)
    first, second, third, fourth = [await q.enqueue({"n": n}) for n in range(4)]
    gap_shard = parse_message_id(first).shard  # single enqueues take turns at the shards
    assert parse_message_id(third).shard == gap_shard != parse_message_id(second).shard
    await storage.delete(log_key("q", gap_shard, parse_message_id(first).segment.seq))
    await storage.put(cursor_key("q", 1 - gap_shard), b"garbage")
    await storage.put("q/notes.txt", b"mine")
    await storage.put("q/dedup/" + "0" * 64, b"{")
    await q.close()

    listed = doctor(store_url)
    assert listed.returncode == 1
    problems = {p["key"]: p for p in json.loads(listed.stdout)["problems"]}
    assert "q/notes.txt" in problems
    assert problems["q/notes.txt"]["fix"] == ""
    assert "empty segment" in problems[log_key("q", gap_shard, 0)]["fix"]
    assert "rebuild" in problems[cursor_key("q", 1 - gap_shard)]["fix"]
    assert "delete it" in problems["q/dedup/" + "0" * 64]["fix"]

    fixed = doctor(store_url, "--fix")
    assert fixed.returncode == 1  # the foreign object stays, for a person to move
    report = json.loads(fixed.stdout)
    assert [p["key"] for p in report["problems"]] == ["q/notes.txt"]
    assert len(report["fixed"]) == 3

    q = await Queue.open(storage, "q")
    claimed = {lease.id for lease in await q.claim(1000, 30)}
    assert third in claimed
    assert first not in claimed
    assert {second, fourth} <= claimed  # the rebuilt shard delivers its messages
    await q.close()
    await storage.close()


async def test_problems_reach_the_dashboard_and_stats_json(storage: Storage) -> None:
    from s3queue.ops.dashboard import Dashboard

    q = await Queue.open(storage, "q", shards=2)
    await q.enqueue({"n": 1})
    await storage.put(cursor_key("q", 1), b"garbage")
    board = Dashboard(storage, refresh=0.01)
    try:
        [queue] = (await board.overview())["queues"]
        assert [p["key"] for p in queue["problems"]] == [cursor_key("q", 1)]
    finally:
        await board.close()
        await q.close()
