"""End to end: enqueue a backlog, then drain it with P worker processes x C slots.

Order of events in one cell:

1. A producer (this process) enqueues the N messages with ``enqueue_many`` in batches
   of 100, 8 batches in flight; its time and requests are recorded separately.
2. P processes ``python -m bench.worker`` start; each opens the queue and prints
   ``ready``, then waits for a "go" line on standard input. Interpreter start-up and
   imports are therefore outside the clock.
3. The clock starts; every worker gets "go" at once.
4. A separate ``Queue`` in this process (not counted) polls ``stats()`` every 0.2 s
   until ``completed == N``; then every worker gets SIGTERM, finishes its running
   jobs and writes its report (requests by kind, processed, errors, and the wall-clock
   time of its last completed ack).
5. Drain time = the last durable ack of any worker minus the start, so the 0.2 s
   polling adds no error; the polling-observed time is recorded too.

Requests per message = (producer + every worker) / N; the driver's polling is excluded.

Workers do not sweep unless ``--sweep-interval`` says so (then sweeping's requests are
among the workers' and its passes are reported); ``--result-ttl`` creates the queue
with that ``Retention(result_ttl=...)``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    KINDS,
    ROOT,
    Backends,
    Row,
    add_counts,
    cost_per_million,
    per_message,
    print_table,
    release,
    requests_of,
    stop_workers,
)
from bench.worker import build_storage
from s3queue import Queue, Retention

QUEUE = "bench"
BATCH = 100
POLL = 0.2

COLUMNS = (
    ("backend", "backend"),
    ("handler", "handler"),
    ("procs", "P"),
    ("concurrency", "C"),
    ("shards", "shards"),
    ("latency_ms", "sim ms"),
    ("messages", "messages"),
    ("msgs_per_s", "msg/s"),
    ("drain_seconds", "drain s"),
    ("requests_per_msg", "req/msg"),
    ("get_per_msg", "GET"),
    ("put_per_msg", "PUT"),
    ("conditional_put_per_msg", "cond PUT"),
    ("list_per_msg", "LIST"),
    ("delete_per_msg", "DEL"),
    ("cost_per_million_usd", "$/M msgs"),
    ("throttled_retries", "503 retried"),
    ("errors_surfaced", "errors"),
)
#: Shown when the workers sweep (``--sweep-interval``).
SWEEP_COLUMNS = (
    ("sweep_passes", "sweeps"),
    ("sweep_removed", "swept"),
    ("sweep_requests", "sweep req"),
)


def cell_messages(limit: int, procs: int, concurrency: int, exact: bool) -> int:
    """About 625 messages per handler slot, at least 1,000, at most ``limit``: cells with
    one slot per process finish in seconds; 4 x 8 and every x 32 cell run 20,000."""
    if exact:
        return limit
    return min(limit, max(1000, 625 * procs * concurrency))


async def produce(
    url: str,
    messages: int,
    shards: int,
    latency_ms: float,
    limit_scale: float,
    retention: Retention | None = None,
) -> dict[str, Any]:
    storage = build_storage(url, latency_ms, 1.0, limit_scale)
    q = await Queue.open(storage, QUEUE, shards=shards, retention=retention)
    q.storage.counts.reset()  # the queue's creation and store probe are not per-message work
    started = time.perf_counter()
    batches = [
        [{"n": n} for n in range(s, min(messages, s + BATCH))] for s in range(0, messages, BATCH)
    ]
    gate = asyncio.Semaphore(8)

    async def write(batch: list[dict[str, int]]) -> None:
        async with gate:
            await q.enqueue_many(batch)

    await asyncio.gather(*(write(b) for b in batches))
    elapsed = time.perf_counter() - started
    await q.close()
    return {"seconds": elapsed, "counts": storage.counts.snapshot()}


async def wait_completed(url: str, messages: int, limit: float, workers: list[Any]) -> float:
    """Seconds until ``stats().completed`` reaches ``messages``, polled on a separate,
    uncounted Queue object."""
    q = await Queue.open(url, QUEUE, verify_store=False)
    started = time.perf_counter()
    try:
        while (await q.stats()).completed < messages:
            if time.perf_counter() - started > limit:
                raise SystemExit(f"the drain did not finish within {limit:.0f} s")
            if any(w.poll() is not None for w in workers):
                raise SystemExit("a worker process exited early; see its output above")
            await asyncio.sleep(POLL)  # watching other processes: nothing to await
        return time.perf_counter() - started
    finally:
        await q.close()


def start_workers(
    url: str,
    procs: int,
    concurrency: int,
    handler: str,
    latency_ms: float,
    limit_scale: float,
    profile_dir: str,
    sweep_interval: float | None = None,
) -> tuple[list[subprocess.Popen[str]], list[Path]]:
    reports = [
        Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".json")[1]) for _ in range(procs)
    ]
    workers = []
    for i, report in enumerate(reports):
        command = [
            sys.executable,
            "-m",
            "bench.worker",
            url,
            QUEUE,
            "--concurrency",
            str(concurrency),
            "--handler",
            handler,
            "--report",
            str(report),
            "--latency-ms",
            str(latency_ms),
            "--share",
            str(1 / procs),
            "--limit-scale",
            str(limit_scale),
            "--wait-for-go",
        ]
        if sweep_interval is not None:
            command += ["--sweep-interval", str(sweep_interval)]
        if profile_dir:
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            command += [
                "--profile",
                str(Path(profile_dir) / f"worker-{procs}x{concurrency}-{i}.txt"),
            ]
        workers.append(
            subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        )
    return workers, reports


def run_cell(  # noqa: PLR0913 - one keyword per command-line knob of a cell
    backends: Backends,
    backend: str,
    *,
    messages: int,
    procs: int,
    concurrency: int,
    handler: str,
    shards: int = 4,
    latency_ms: float = 0.0,
    limit_scale: float = 1.0,
    profile_dir: str = "",
    sweep_interval: float | None = None,
    result_ttl: float | None = None,
) -> Row:
    url = backends.url(backend)
    if handler == "task":  # sent as task calls, one enqueue() per message
        from bench import tasks

        producer = asyncio.run(tasks.produce(url, messages, shards))
    else:
        retention = None if result_ttl is None else Retention(result_ttl=result_ttl)
        producer = asyncio.run(produce(url, messages, shards, latency_ms, limit_scale, retention))
    workers, reports = start_workers(
        url, procs, concurrency, handler, latency_ms, limit_scale, profile_dir, sweep_interval
    )
    try:
        go_wall = release(workers)
        observed = asyncio.run(wait_completed(url, messages, 900, workers))
    finally:
        stop_workers(workers)
    totals: dict[str, int] = {}
    add_counts(totals, producer["counts"])
    processed = handler_errors = lease_lost = warnings = slowdowns = commits = conflicts = 0
    sweep = {"passes": 0, "removed": 0, "requests": 0}
    last_ack = go_wall
    samples: list[str] = []
    lost_at: list[float] = []
    for report in reports:
        data = json.loads(report.read_text())
        report.unlink()
        add_counts(totals, data)
        processed += data["processed"]
        handler_errors += data["handler_errors"]
        lease_lost += data["lease_lost"]
        lost_at += [round(at - go_wall, 2) for at in data.get("lease_lost_at", [])]
        warnings += data["warnings"]
        slowdowns += data["slowdowns_answered"]
        commits += data["commits"]
        conflicts += data["conflicts"]
        samples += data["warning_samples"]
        for kind in sweep:
            sweep[kind] += data[f"sweep_{kind}"]
        last_ack = max(last_ack, data["last_completed_at"] or go_wall)
    drain = max(1e-6, last_ack - go_wall)
    by_kind = per_message(totals, messages)
    row: Row = {
        "backend": backend,
        "handler": handler,
        "procs": procs,
        "concurrency": concurrency,
        "shards": shards,
        "latency_ms": latency_ms,
        "limit_scale": limit_scale,
        "messages": messages,
        "enqueue_seconds": round(producer["seconds"], 3),
        "drain_seconds": round(drain, 3),
        "observed_seconds": round(observed, 3),
        "msgs_per_s": round(messages / drain, 1),
        "requests": totals,
        "requests_total": requests_of(totals),
        "requests_per_msg": by_kind["total"],
        **{f"{kind}_per_msg": by_kind[kind] for kind in KINDS},
        "producer_requests_per_msg": round(requests_of(producer["counts"]) / messages, 4),
        "cost_per_million_usd": round(cost_per_million(totals, messages), 4),
        "cursor_commits": commits,
        "claim_conflicts": conflicts,
        "processed": processed,
        "duplicates": processed - messages,
        "throttled_retries": totals["throttled"],
        "slowdowns_answered": slowdowns,
        "handler_errors": handler_errors,
        "lease_lost": lease_lost,
        "lease_lost_seconds": sorted(lost_at)[:20],  # after "go"
        "warnings_logged": warnings,
        "errors_surfaced": handler_errors + lease_lost + warnings,
        "warning_samples": samples[:5],
        "sweep_interval": sweep_interval,
        "result_ttl": result_ttl,
        "sweep_passes": sweep["passes"],
        "sweep_removed": sweep["removed"],
        "sweep_requests": sweep["requests"],
    }
    return row


def run(args: Any, backends: Backends) -> list[Row]:
    rows = []
    for backend in args.backend:
        for handler in args.handler:
            for procs in args.procs:
                for concurrency in args.concurrency:
                    row = run_cell(
                        backends,
                        backend,
                        messages=cell_messages(args.messages, procs, concurrency, args.exact),
                        procs=procs,
                        concurrency=concurrency,
                        handler=handler,
                        shards=args.shards,
                        profile_dir=args.profile_dir,
                        sweep_interval=args.sweep_interval,
                        result_ttl=args.result_ttl,
                    )
                    sweeping = args.sweep_interval is not None
                    print_table("e2e", [row], COLUMNS + (SWEEP_COLUMNS if sweeping else ()))
                    rows.append(row)
    return rows
