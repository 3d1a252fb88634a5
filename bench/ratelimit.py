"""Rate limits: a backlog drained by P worker processes under one queue-wide limit.

Order of events in one cell:

1. A producer (this process) enqueues N no-op jobs (N a multiple of 4) in four
   ``enqueue_many`` batches, which the producer spreads evenly over the queue's 4
   shards (a limit is shared out by shard); its requests are counted.
2. P processes ``python -m bench.worker --rate-limit R --starts FILE`` start, open the
   queue, set the limit (which settles their clock estimate), print ``ready`` and
   wait for "go": start-up is outside the count.
3. Every worker gets "go" at once. Each appends the wall-clock time of every job it
   starts to its file (the processes share this machine's clock); the driver counts
   the lines (no store polling) until N jobs started, then stops the workers.
4. The figures: the most jobs started in any one-second window (sliding over the
   start times), the average rate (N - 1 jobs over the span from the first start to
   the last), and requests per job (producer + workers).

Each backend runs the cell twice, with the limit and without it (same N, same
workers), so that the requests per job of the two can be set side by side. Workers
poll at the Worker's default ``poll_interval`` of 1 s: idle processes are part of
what a limited queue costs.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Backends,
    Row,
    add_counts,
    per_message,
    print_table,
    release,
    requests_of,
)
from s3queue import Queue

QUEUE = "rated"
SHARDS = 4

COLUMNS = (
    ("backend", "backend"),
    ("limit", "limit"),
    ("procs", "P"),
    ("messages", "jobs"),
    ("busiest_second", "most in 1 s"),
    ("average_per_s", "jobs/s"),
    ("requests_per_msg", "req/job"),
    ("get_per_msg", "GET"),
    ("conditional_put_per_msg", "cond PUT"),
    ("put_per_msg", "PUT"),
    ("conflicts", "lost races"),
)


def busiest_second(starts: list[float]) -> int:
    """The most jobs started within any one second (a window [t, t + 1) opening at a
    start holds at least as many as any other)."""
    ordered = sorted(starts)
    return max(bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered))


async def produce(url: str, messages: int) -> dict[str, int]:
    q = await Queue.open(url, QUEUE, shards=SHARDS)
    q.storage.counts.reset()  # the queue's creation and store probe are not per-job work
    # A batch per shard: the producer sends consecutive batches (and the parts of a
    # large one) to the shards in turn, so each shard gets a quarter.
    part = messages // SHARDS
    for first in range(0, part * SHARDS, part):
        await q.enqueue_many([{"n": n} for n in range(first, first + part)])
    counts = q.storage.counts.snapshot()
    await q.close()
    return counts


def started(paths: list[Path]) -> list[float]:
    return [float(line) for p in paths if p.exists() for line in p.read_text().split()]


def start(url: str, limit: str, report: Path, starts: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "bench.worker",
        url,
        QUEUE,
        "--concurrency",
        "8",
        "--handler",
        "noop",
        "--report",
        str(report),
        "--starts",
        str(starts),
        "--poll-interval",
        "1.0",
        "--wait-for-go",
    ]
    if limit:
        command += ["--rate-limit", limit]
    return subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def drain(url: str, procs: int, limit: str, messages: int) -> tuple[list[float], list[Any]]:
    """Run ``procs`` workers until ``messages`` jobs started: the start times and the
    workers' reports."""
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp:
        return _drain(url, procs, limit, messages, Path(tmp))


def _drain(
    url: str, procs: int, limit: str, messages: int, tmp: Path
) -> tuple[list[float], list[Any]]:
    reports = [tmp / f"report-{i}.json" for i in range(procs)]
    starts = [tmp / f"starts-{i}.txt" for i in range(procs)]
    workers = [start(url, limit, reports[i], starts[i]) for i in range(procs)]
    try:
        release(workers)
        deadline = time.monotonic() + 3 * messages / 10 + 120
        while len(started(starts)) < messages:
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise SystemExit(f"the drain stopped at {len(started(starts))} of {messages}")
            time.sleep(0.2)  # watching other processes: nothing to await
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=120)
    return started(starts), [json.loads(r.read_text()) for r in reports]


def run_cell(backends: Backends, backend: str, limit: str, procs: int, messages: int) -> Row:
    url = backends.url(backend)
    producer = asyncio.run(produce(url, messages))
    starts, reports = drain(url, procs, limit, messages)
    totals: dict[str, int] = {}
    add_counts(totals, producer)
    for report in reports:
        add_counts(totals, report)
    by_kind = per_message(totals, messages)
    span = max(starts) - min(starts)
    return {
        "backend": backend,
        "limit": limit or "none",
        "procs": procs,
        "shards": SHARDS,
        "messages": messages,
        "started": len(starts),
        "busiest_second": busiest_second(starts),
        "average_per_s": round((len(starts) - 1) / span, 2),
        "span_seconds": round(span, 3),
        "requests": totals,
        "requests_total": requests_of(totals),
        "requests_per_msg": by_kind["total"],
        **{f"{kind}_per_msg": value for kind, value in by_kind.items() if kind != "total"},
        "conflicts": sum(r["conflicts"] for r in reports),
        "processed": sum(r["processed"] for r in reports),
        "lease_lost": sum(r["lease_lost"] for r in reports),
        "warnings_logged": sum(r["warnings"] for r in reports),
    }


def run(args: Any, backends: Backends) -> list[Row]:
    rows = []
    for backend in args.backend:
        for limit in (args.rate_limit, ""):
            row = run_cell(backends, backend, limit, args.rate_procs, args.rate_messages)
            print_table("ratelimit", [row], COLUMNS)
            rows.append(row)
    return rows
