"""A worker process for the multi-process tests: claims, logs and acks, using the
Queue API directly so that every claim and ack is recorded with its token.

    python -m tests.workerproc URL QUEUE LOG [--visibility S] [--batch N]
        [--work-ms MS] [--stall-after K] [--skew-margin S] [--report FILE]

Log lines: ``claim <id> <token> <attempt>``, ``ack <id> <token>`` and
``lost <id> <token>`` (an ack refused by fencing). With --stall-after K, after K
acks it claims one more batch and hangs holding it (to be killed). SIGTERM stops it
after the current batch; --report then receives its request counts as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from s3queue import LeaseLost, Queue


async def main(args: argparse.Namespace) -> None:
    q = await Queue.open(args.url, args.queue, skew_margin=args.skew_margin, verify_store=False)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    acked = 0
    idle = 0.005
    with Path(args.log).open("a") as log:  # noqa: ASYNC230 - a test log, tiny writes
        print("ready", flush=True)
        while not stop.is_set():
            leases = await q.claim(args.batch, args.visibility)
            for lease in leases:
                log.write(f"claim {lease.id} {lease.token} {lease.attempt}\n")
            log.flush()
            if not leases:
                try:
                    await asyncio.wait_for(stop.wait(), idle)
                except TimeoutError:
                    idle = min(0.2, idle * 2)
                continue
            idle = 0.005
            if args.stall_after is not None and acked >= args.stall_after:
                print("stalled", flush=True)
                await asyncio.Event().wait()  # hold the leases until killed
            if args.work_ms:
                await asyncio.sleep(args.work_ms / 1000)  # the simulated job

            async def ack(lease: object) -> str:
                try:
                    await q.ack(lease)  # type: ignore[arg-type]
                    return "ack"
                except LeaseLost:
                    return "lost"

            outcomes = await asyncio.gather(*(ack(lease) for lease in leases))
            for lease, outcome in zip(leases, outcomes, strict=True):
                log.write(f"{outcome} {lease.id} {lease.token}\n")
                acked += outcome == "ack"
            log.flush()
    if args.report:
        Path(args.report).write_text(json.dumps(q.storage.counts.snapshot()))  # noqa: ASYNC240
    await q.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("log")
    parser.add_argument("--visibility", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--stall-after", type=int, default=None)
    parser.add_argument("--skew-margin", type=float, default=2.0)
    parser.add_argument("--report", default=None)
    asyncio.run(main(parser.parse_args()))
