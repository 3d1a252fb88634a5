"""A worker process for the rate-limit tests: a real Worker with a rate limit that
records when each job starts.

    python -m tests.rateproc URL QUEUE STARTS --rate-limit 50/s [--concurrency C]
        [--poll-interval S] [--report FILE]

Prints ``ready`` once the queue is open (and, with a limit, its clock settled), then
waits for a line on standard input, so that the test starts every process's work at
once with start-up outside the count. Every job then appends a line to STARTS: its
start time (``time.time()``: the processes share one machine's clock), its id and
the store time of its claim. SIGTERM stops the worker; the report then receives its
request counts as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from s3queue import Polling, Queue, Worker


async def main(args: argparse.Namespace) -> None:
    q = await Queue.open(args.url, args.queue, verify_store=False)
    if args.rate_limit:
        q.set_rate_limit(args.rate_limit)
    await q.sync_clock()  # with a limit: the clock's first estimate is settled now
    with Path(args.starts).open("a") as starts:  # noqa: ASYNC230 - a line per job, tiny

        async def job(payload: Any, ctx: Any) -> None:
            starts.write(f"{time.time():.6f} {ctx.message_id} {ctx.claimed_at:.6f}\n")
            starts.flush()

        worker = Worker(
            q,
            job,
            concurrency=args.concurrency,
            polling=Polling(poll_interval=args.poll_interval),
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(worker.stop()))
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        await worker.run()
    report = {
        **q.storage.counts.snapshot(),
        "conflicts": sum(c.conflicts for c in q.committers),
        "processed": worker.processed,
    }
    await q.close()
    if args.report:
        Path(args.report).write_text(json.dumps(report))  # noqa: ASYNC240 - once, at exit


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("starts")
    parser.add_argument("--rate-limit", default="")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--report", default="")
    asyncio.run(main(parser.parse_args()))
