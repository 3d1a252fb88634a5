"""Retention in the steady state: after a drain, does sweeping bring the queue back to
its floor, and what does that cost?

Order of events in one cell:

1. The queue is created with ``Retention(result_ttl=T)`` and S shards; N messages
   are enqueued as in ``e2e`` (``enqueue_many``, batches of 100).
2. P ``bench.worker`` processes (C = 8 slots, handler ``value``: returns
   ``{"ok": n}``, so every message leaves a result record) drain it, sweeping every
   I seconds (``Polling(sweep_interval=I)``).
3. Right after the last completion (``stats()`` polled every 0.2 s), a census: the
   queue's prefix is listed and every key classified with ``layout.classify``; on
   ``file``, the directory is walked too, ``.s3queue-locks`` included.
4. The workers keep running, idle, until the last completion is T +
   ``SEGMENT_MIN_AGE`` + I seconds old; then the census again, and again every I
   seconds while the queue is above the bar (at most ``--retention-wait`` seconds
   after the last completion).
5. The workers stop and report their sweeper passes: when each pass ended, what it
   had removed and the requests it spent. The floor was reached at the last pass
   that removed anything.

The bar: objects <= open segments in the cursors' windows + 4 x shards + live
messages (pending, delayed, processing). The listings and ``stats()`` calls are the
driver's own and are not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Backends,
    Row,
    add_counts,
    print_table,
    release,
    requests_of,
    stop_workers,
)
from bench.e2e import POLL, QUEUE, produce, start_workers, wait_completed
from s3queue import Queue, Retention
from s3queue.core import layout

CONCURRENCY = 8
#: Defaults of this scenario (the shared options default to "off" for e2e).
RESULT_TTL = 60.0
SWEEP_INTERVAL = 15.0
#: Fixed objects allowed per shard by the bar (a cursor, and the queue's few
#: singletons: settings, sweeper, clock, wake objects).
FIXED_PER_SHARD = 4


async def census(url: str, root: Path | None) -> dict[str, Any]:
    """Objects of the queue by kind, the cursors' windows and live messages; on file,
    the files and directories on disk."""
    q = await Queue.open(url, QUEUE, verify_store=False)
    try:
        entries = await q.storage.list(layout.queue_prefix(QUEUE))
        stats = await q.stats()
    finally:
        await q.close()
    kinds = Counter(layout.classify(QUEUE, e.key) or "other" for e in entries)
    window = sum(s.window_segments for s in stats.shards)
    live = stats.pending + stats.delayed + stats.processing
    out: dict[str, Any] = {
        "at": time.time(),
        "objects": len(entries),
        "kinds": dict(sorted(kinds.items())),
        "window_segments": window,
        "live": live,
        "completed": stats.completed,
        "bar": window + FIXED_PER_SHARD * len(stats.shards) + live,
    }
    if root is not None:
        out["disk"] = walk(root)
    return out


def walk(root: Path) -> dict[str, int]:
    """Files and directories under the store's root: the queue's, the lock stripes'."""
    counts = {"queue_files": 0, "lock_files": 0, "other_files": 0, "directories": 0}
    for directory, subdirs, files in os.walk(root):
        counts["directories"] += len(subdirs)
        rel = Path(directory).relative_to(root).parts
        if rel[:1] == (QUEUE,):
            counts["queue_files"] += len(files)
        elif rel[:1] == (".s3queue-locks",):
            counts["lock_files"] += len(files)
        else:
            counts["other_files"] += len(files)
    counts["files"] = counts["queue_files"] + counts["lock_files"] + counts["other_files"]
    return counts


@dataclass(frozen=True, slots=True)
class Cell:
    """One run: where, how much, and the retention settings it runs under."""

    backend: str
    messages: int
    procs: int
    shards: int
    result_ttl: float
    sweep_interval: float
    #: Seconds after the drain to wait at most for the floor.
    max_wait: float


def run_cell(backends: Backends, cell: Cell) -> Row:
    url = backends.url(cell.backend)
    root = Path(url.removeprefix("file://")) if cell.backend == "file" else None
    retention = Retention(result_ttl=cell.result_ttl)
    producer = asyncio.run(produce(url, cell.messages, cell.shards, 0.0, 1.0, retention))
    workers, reports = start_workers(
        url, cell.procs, CONCURRENCY, "value", 0.0, 1.0, "", cell.sweep_interval
    )
    censuses: list[dict[str, Any]] = []
    try:
        go_wall = release(workers)
        asyncio.run(wait_completed(url, cell.messages, 1800, workers))
        drained = time.time()  # the last completion is at most POLL before this
        censuses.append(asyncio.run(census(url, root)))
        settle = cell.result_ttl + layout.SEGMENT_MIN_AGE + cell.sweep_interval
        time.sleep(max(0.0, drained + settle - time.time()))  # other processes' work
        while True:
            censuses.append(asyncio.run(census(url, root)))
            last = censuses[-1]
            if last["objects"] <= last["bar"] or time.time() - drained > cell.max_wait:
                break
            time.sleep(cell.sweep_interval)
    finally:
        stop_workers(workers)
    return summarize(cell, go_wall, drained, producer, reports, censuses)


def summarize(
    cell: Cell,
    go_wall: float,
    drained: float,
    producer: dict[str, Any],
    reports: list[Path],
    censuses: list[dict[str, Any]],
) -> Row:
    workers: dict[str, int] = {}
    last_completion = go_wall
    passes: list[list[float]] = []  # [time, removed and requests so far, worker]
    per_worker = []
    for i, report in enumerate(reports):
        data = json.loads(report.read_text())
        report.unlink()
        add_counts(workers, data)
        last_completion = max(last_completion, data["last_completed_at"] or go_wall)
        passes += [[at, removed, spent, i] for at, removed, spent in data["sweep_log"]]
        per_worker.append(
            {
                "processed": data["processed"],
                "requests": requests_of(data),
                "sweep_passes": data["sweep_passes"],
                "sweep_removed": data["sweep_removed"],
                "sweep_requests": data["sweep_requests"],
                "errors": data["handler_errors"] + data["lease_lost"] + data["warnings"],
            }
        )
    removing = [at for at, removed, _, i in passes if removed > _before(passes, at, i)[0]]
    final = censuses[-1]
    during_drain = [at for at in removing if at <= drained]
    sweep_requests = sum(w["sweep_requests"] for w in per_worker)
    worker_requests = requests_of(workers)
    return {
        "backend": cell.backend,
        "messages": cell.messages,
        "procs": cell.procs,
        "concurrency": CONCURRENCY,
        "shards": cell.shards,
        "result_ttl": cell.result_ttl,
        "sweep_interval": cell.sweep_interval,
        "segment_min_age": layout.SEGMENT_MIN_AGE,
        "drain_seconds": round(last_completion - go_wall, 1),
        "observed_after_last_completion": round(drained - last_completion, 2),
        "peak": censuses[0],
        "after": final,
        "censuses": [
            {
                "seconds": round(c["at"] - last_completion, 1),
                "objects": c["objects"],
                "bar": c["bar"],
            }
            for c in censuses
        ],
        "met": final["objects"] <= final["bar"],
        "floor_seconds": (
            round(max(removing) - last_completion, 1)
            if removing and final["objects"] <= final["bar"]
            else None
        ),
        "first_removal_seconds": round(min(removing) - last_completion, 1) if removing else None,
        "removing_passes": len(removing),
        "removing_passes_during_drain": len(during_drain),
        "sweep_passes": sum(w["sweep_passes"] for w in per_worker),
        "sweep_removed": sum(w["sweep_removed"] for w in per_worker),
        "sweep_requests": sweep_requests,
        "worker_requests": worker_requests,
        "worker_request_counts": workers,
        "producer_requests": requests_of(producer["counts"]),
        "sweep_share": round(sweep_requests / max(1, worker_requests), 4),
        "workers": per_worker,
        # Per pass: seconds after the last completion, objects removed, requests
        # spent (with the lease reads of the process's passes left to another since
        # its previous one), and which worker.
        "passes": sorted(
            [round(at - last_completion, 1), removed - before[0], spent - before[1], i]
            for at, removed, spent, i in passes
            for before in [_before(passes, at, i)]
        ),
        "poll": POLL,
    }


def _before(passes: list[list[float]], at: float, worker: float) -> tuple[float, float]:
    """What ``worker`` had removed and spent by its pass before the one at ``at``."""
    earlier = [(r, s) for t, r, s, i in passes if i == worker and t < at]
    return max(earlier, default=(0.0, 0.0))


KIND_COLUMNS = (("kind", "kind"), ("peak", "after the drain"), ("after", "after sweeping"))
SUMMARY_COLUMNS = (
    ("backend", "backend"),
    ("messages", "messages"),
    ("drain_seconds", "drain s"),
    ("peak_objects", "peak objects"),
    ("after_objects", "objects after"),
    ("bar", "bar"),
    ("met", "met"),
    ("floor_seconds", "floor at s"),
    ("sweep_passes", "passes"),
    ("sweep_removed", "removed"),
    ("sweep_requests", "sweep req"),
    ("worker_requests", "worker req"),
)


def show(row: Row) -> None:
    peak, after = row["peak"], row["after"]
    kinds = sorted(set(peak["kinds"]) | set(after["kinds"]))
    lines: list[Row] = [
        {"kind": k, "peak": peak["kinds"].get(k, 0), "after": after["kinds"].get(k, 0)}
        for k in kinds
    ]
    lines.append({"kind": "total objects", "peak": peak["objects"], "after": after["objects"]})
    for name in ("window_segments", "live", "bar"):
        lines.append({"kind": name, "peak": peak[name], "after": after[name]})
    if "disk" in peak:
        for name in peak["disk"]:
            lines.append(
                {"kind": f"disk {name}", "peak": peak["disk"][name], "after": after["disk"][name]}
            )
    print_table(f"retention, {row['backend']}: objects by kind", lines, KIND_COLUMNS)
    summary = {
        **row,
        "peak_objects": peak["objects"],
        "after_objects": after["objects"],
        "bar": after["bar"],
        "met": "yes" if row["met"] else "NO",
        "floor_seconds": row["floor_seconds"] if row["floor_seconds"] is not None else "-",
    }
    print_table("retention", [summary], SUMMARY_COLUMNS)


def run(args: Any, backends: Backends) -> list[Row]:
    rows = []
    for backend in args.backend:
        cell = Cell(
            backend=backend,
            messages=args.retention_messages,
            procs=args.retention_procs,
            shards=args.shards,
            result_ttl=RESULT_TTL if args.result_ttl is None else args.result_ttl,
            sweep_interval=SWEEP_INTERVAL if args.sweep_interval is None else args.sweep_interval,
            max_wait=args.retention_wait,
        )
        row = run_cell(backends, cell)
        show(row)
        rows.append(row)
    return rows
