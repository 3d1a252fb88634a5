"""Periodic jobs: once per tick however many workers run the schedule."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from s3queue import ConfigurationError, JobContext, Queue, Worker
from s3queue.runtime import cron
from s3queue.runtime.cron import Cron, parse_cron
from tests.conftest import FAST


def test_schedules_and_payloads_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="invalid cron schedule"):
        Cron("61 * * * *")
    with pytest.raises(ConfigurationError, match="not JSON"):
        Cron("* * * * *", payload=object())
    with pytest.raises(ConfigurationError, match="holds nan"):
        Cron("* * * * *", payload={"ratio": float("nan")})
    assert Cron("*/5 * * * *").next_tick(1_800_000_001.0) == 1_800_000_300.0
    assert Cron("* * * * * */10").next_tick(1_800_000_001.0) == 1_800_000_010.0
    assert Cron("0 9 * * 1", name="weekly").dedup_key(1_800_000_000.0) == "cron:weekly:1800000000"


def test_command_line_form() -> None:
    every_five = parse_cron('*/5 * * * * {"task": "report", "to": ["a b"]}')
    assert every_five.schedule == "*/5 * * * *"
    assert every_five.payload == {"task": "report", "to": ["a b"]}
    seconds = parse_cron("* * * * * */10 [1, 2]")
    assert seconds.schedule == "* * * * * */10"
    assert seconds.payload == [1, 2]
    assert parse_cron("0 * * * *").payload is None
    with pytest.raises(ConfigurationError, match="--cron"):
        parse_cron("every minute please")


async def test_each_tick_is_enqueued_once_by_racing_workers(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cron, "CRON_JITTER", 0.05)
    queues = [await Queue.open(store_url, "ticks", shards=2) for _ in range(3)]
    ran: list[str] = []
    three = asyncio.Event()

    async def handler(payload: Any, ctx: JobContext) -> None:
        assert payload == {"task": "tick"}
        ran.append(ctx.message_id)
        if len(ran) >= 3:
            three.set()

    every_second = Cron("* * * * * *", payload={"task": "tick"}, name="tick")
    workers = [Worker(q, handler, concurrency=2, cron=[every_second], polling=FAST) for q in queues]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    await asyncio.wait_for(three.wait(), 60)
    for worker in workers:
        await worker.stop()
    await asyncio.gather(*tasks)

    # Every message the schedules enqueued: those that ran and those still waiting.
    leftover = [lease.id for lease in await queues[0].claim(100, 30)]
    stats = await queues[0].stats()
    assert stats.pending == 0
    ids = ran + leftover
    assert len(ids) == stats.processing + stats.completed
    infos = [await queues[0].get(mid) for mid in ids]
    keys = [info.dedup_key for info in infos if info is not None and info.dedup_key is not None]
    assert len(keys) == len(ids)
    assert all(key.startswith("cron:tick:") for key in keys)
    assert len(set(keys)) == len(keys)  # no tick was enqueued twice
    for q in queues:
        await q.close()
