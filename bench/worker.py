"""One benchmark worker process: a Worker with a no-op or 10 ms handler.

    python -m bench.worker URL QUEUE --concurrency C --handler noop|sleep10
        --report FILE [--latency-ms MS --share F]

Prints "ready" once the queue is open; on SIGTERM stops (draining) and writes its
request counts, processed count and handler-visible errors to FILE as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from s3queue import Queue, Worker
from s3queue.storage import RetryingStorage, open_raw_storage
from s3queue.storage.base import Storage


async def noop(payload: Any, ctx: Any) -> None:
    return None


async def sleep10(payload: Any, ctx: Any) -> None:
    await asyncio.sleep(0.010)  # the simulated job


def build_storage(url: str, latency_ms: float, share: float) -> Storage:
    raw = open_raw_storage(url)
    if latency_ms > 0:
        from bench.latency_store import LatencyStore

        raw = LatencyStore(raw, latency_ms, share)
    return RetryingStorage(raw)


async def main(args: argparse.Namespace) -> None:
    storage = build_storage(args.url, args.latency_ms, args.share)
    q = await Queue.open(storage, args.queue, verify_store=False)
    handler = {"noop": noop, "sleep10": sleep10}[args.handler]
    worker = Worker(
        q, handler, concurrency=args.concurrency, poll_interval=0.01, max_poll_interval=0.2
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(worker.stop()))
    print("ready", flush=True)
    await worker.run()
    slowdowns = getattr(getattr(storage, "inner", None), "slowdowns", 0)
    report = {
        **q.storage.counts.snapshot(),
        "processed": worker.processed,
        "handler_errors": worker.failed,
        "slowdowns": slowdowns,
    }
    Path(args.report).write_text(json.dumps(report))  # noqa: ASYNC240 - once, at exit
    await q.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--handler", choices=["noop", "sleep10"], default="noop")
    parser.add_argument("--report", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--share", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
