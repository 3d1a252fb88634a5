"""One benchmark worker process: a Worker with a no-op or a 10 ms async handler, or
the router of bench/tasks.py's app (``--handler task``: a no-op task).

    python -m bench.worker URL QUEUE --concurrency C --handler noop|sleep10|value|task
        --report FILE [--latency-ms MS --share F --limit-scale S] [--wait-for-go]
        [--profile FILE] [--poll-interval S] [--sweep-interval S]
        [--rate-limit N/s --starts FILE]

Opens the queue, prints ``ready``; with ``--wait-for-go`` it then waits for a line on
standard input before it starts claiming (so that the driver starts every process's
clock at once). Runs ``Worker(polling=Polling(poll_interval=0.2))`` (or
``--poll-interval``) with the default prefetch until SIGTERM, lets running jobs
finish, and writes JSON to FILE: its storage requests by kind, messages processed,
and every error that got past the retry layer (handler failures, lost leases,
warnings logged by s3queue). ``--rate-limit`` sets a limit on the whole queue
(``Queue.set_rate_limit``); ``--starts`` appends each job's start time to a file.
``--sweep-interval`` lets the worker sweep (``Polling(sweep_interval=S)``; off by
default, so that a drain measures claiming alone); the report then adds its passes,
what they removed and the requests they spent, with a line per pass it made.
``value`` is a no-op handler that returns ``{"ok": n}`` (a result record per message).

With ``--latency-ms`` the store is ``RetryingStorage(LatencyStore(raw))`` (see
bench/latency_store.py): a Storage object cannot cross processes, so each worker
builds its own wrapper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from s3queue import Polling, Queue, Worker
from s3queue.runtime.worker import WorkerEvent
from s3queue.storage import RetryingStorage, open_raw_storage
from s3queue.storage.base import Storage


async def noop(payload: Any, ctx: Any) -> None:
    return None


async def sleep10(payload: Any, ctx: Any) -> None:
    await asyncio.sleep(0.010)  # the simulated job


async def value(payload: Any, ctx: Any) -> dict[str, Any]:
    return {"ok": payload["n"]}  # stored: a result record per message


HANDLERS: dict[str, Any] = {"noop": noop, "sleep10": sleep10, "value": value}


def handler_for(name: str) -> Any:
    """A handler, or for "task" the router of bench/tasks.py's app."""
    if name == "task":
        from bench.tasks import app

        return app.router()
    return HANDLERS[name]


def build_storage(
    url: str, latency_ms: float = 0.0, share: float = 1.0, limit_scale: float = 1.0
) -> Storage:
    """The store as the queue sees it; with ``latency_ms`` > 0, simulated far-away S3."""
    raw = open_raw_storage(url)
    if latency_ms > 0:
        from bench.latency_store import LatencyStore

        raw = LatencyStore(raw, latency_ms, share=share, limit_scale=limit_scale)
    return RetryingStorage(raw)


class _CountWarnings(logging.Handler):
    """Counts what s3queue logs at WARNING or above: storage errors that the retry
    layer gave up on (claim, ack, extend or release failed) show up here."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(record.getMessage()[:300])


def _record_starts(worker: Worker, path: Path) -> TextIO:
    """Append the wall-clock time of every job start to ``path``, a line each, flushed
    at once: the driver counts the lines while the workers run."""
    out = path.open("a")

    def on_processing(event: WorkerEvent) -> None:
        out.write(f"{event.at:.6f}\n")
        out.flush()

    worker.on("processing", on_processing)
    return out


async def _watch_passes(worker: Worker, passes: list[list[float]]) -> None:
    """After every sweeper pass this process makes, note [wall-clock time, objects
    removed so far, requests spent so far] (the driver finds when collection ended)."""
    upkeep = worker.upkeep
    while True:
        await upkeep.swept.wait()
        upkeep.swept.clear()
        passes.append([time.time(), upkeep.removed, upkeep.requests])


async def main(args: argparse.Namespace) -> None:
    warnings = _CountWarnings()
    logging.getLogger("s3queue").addHandler(warnings)
    storage = build_storage(args.url, args.latency_ms, args.share, args.limit_scale)
    q = await Queue.open(storage, args.queue, verify_store=False)
    if args.rate_limit:
        q.set_rate_limit(args.rate_limit)
        await q.sync_clock()  # with a limit, the clock's first estimate settles here
    worker = Worker(
        q,
        handler_for(args.handler),
        concurrency=args.concurrency,
        polling=Polling(poll_interval=args.poll_interval, sweep_interval=args.sweep_interval),
    )
    starts = _record_starts(worker, Path(args.starts)) if args.starts else None
    lease_lost: list[float] = []  # when each was learned (wall clock)
    last_completed_at = 0.0

    def on_lease_lost(event: WorkerEvent) -> None:
        lease_lost.append(event.at)

    def on_completed(event: WorkerEvent) -> None:
        nonlocal last_completed_at
        last_completed_at = event.at  # wall clock, after the ack is durable

    worker.on("lease_lost", on_lease_lost)
    worker.on("completed", on_completed)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(worker.stop()))
    print("ready", flush=True)
    if args.wait_for_go:
        await loop.run_in_executor(None, sys.stdin.readline)
    profiler: Any = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    passes: list[list[float]] = []
    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(_watch_passes(worker, passes))
        await worker.run()
        watcher.cancel()
    if profiler is not None:
        profiler.stop()
        Path(args.profile).write_text(profiler.output_text(unicode=False, color=False))  # noqa: ASYNC240
    await q.close()
    if starts is not None:
        starts.close()
    inner = getattr(storage, "inner", None)
    report = {
        **storage.counts.snapshot(),
        "processed": worker.processed,
        "last_completed_at": last_completed_at,
        "handler_errors": worker.failed,
        "lease_lost": len(lease_lost),
        "lease_lost_at": lease_lost[:20],
        "warnings": warnings.count,
        "warning_samples": warnings.samples,
        "slowdowns_answered": getattr(inner, "slowdowns", 0),
        "commits": sum(c.commits for c in q.committers),
        "conflicts": sum(c.conflicts for c in q.committers),
        "sweep_passes": worker.upkeep.passes,
        "sweep_removed": worker.upkeep.removed,
        "sweep_requests": worker.upkeep.requests,
        "sweep_log": passes,
    }
    Path(args.report).write_text(json.dumps(report))  # noqa: ASYNC240 - once, at exit


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--handler", choices=[*sorted(HANDLERS), "task"], default="noop")
    parser.add_argument("--report", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--share", type=float, default=1.0)
    parser.add_argument("--limit-scale", type=float, default=1.0)
    parser.add_argument("--wait-for-go", action="store_true")
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument(
        "--sweep-interval", type=float, default=None, help="seconds; default: no sweeping"
    )
    parser.add_argument("--rate-limit", default="", help="e.g. 50/s, on the whole queue")
    parser.add_argument("--starts", default="", help="append each job's start time here")
    parser.add_argument("--profile", default="")
    return parser.parse_args(argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse()))
