"""Simulated far-away S3 (bench/latency_store.py): every request of the producer and
of every worker takes 25 ms (+-20%), and each shard prefix is held to S3's request
rates (3,500 writes and 5,500 reads per second, 503 SlowDown beyond) with the retry
layer outside: ``RetryingStorage(LatencyStore(raw))``. The store underneath is the
local directory, so the simulated latency, not moto's CPU, sets the pace.

1. Scaling: shards x worker processes, each process with 8 slots and the 10 ms
   handler (a job that takes time, so that more slots are worth having).
2. Throttling: 8 processes x 8 slots (64 workers) on one queue with the limits scaled
   down by ``--limit-scale`` (default 1/100) so that 503 SlowDown actually happens on a
   2-core machine; the retries are counted (``counts.throttled``), and so is every
   error that got past them to a handler or to the worker (failed jobs, lost leases,
   warnings logged): the bar is zero.
"""

from __future__ import annotations

from typing import Any

from bench import e2e
from bench.common import Backends, Row, print_table

HANDLER = "sleep10"

COLUMNS = (
    ("shards", "shards"),
    ("procs", "P"),
    ("concurrency", "C"),
    ("limit_scale", "limits x"),
    ("messages", "messages"),
    ("msgs_per_s", "msg/s"),
    ("speedup", "vs 1 proc"),
    ("requests_per_msg", "req/msg"),
    ("cost_per_million_usd", "$/M msgs"),
    ("throttled_retries", "503 retried"),
    ("handler_errors", "handler errors"),
    ("errors_surfaced", "errors"),
)


def run(args: Any, backends: Backends) -> list[Row]:
    rows: list[Row] = []
    for shards in args.shards_grid:
        base: float | None = None
        for procs in args.sim_procs:
            row = e2e.run_cell(
                backends,
                "file",
                messages=args.sim_messages,
                procs=procs,
                concurrency=args.sim_concurrency,
                handler=HANDLER,
                shards=shards,
                latency_ms=args.latency_ms,
                profile_dir=args.profile_dir,
            )
            row["part"] = "scaling"
            base = base or row["msgs_per_s"]
            row["speedup"] = f"{row['msgs_per_s'] / base:.1f}x"
            print_table("simulate: scaling", [row], COLUMNS)
            rows.append(row)
    if args.limit_scale < 1:
        row = e2e.run_cell(
            backends,
            "file",
            messages=args.sim_messages,
            procs=8,
            concurrency=8,
            handler=HANDLER,
            shards=args.stress_shards,
            latency_ms=args.latency_ms,
            limit_scale=args.limit_scale,
        )
        row["part"] = "throttling"
        row["speedup"] = ""
        print_table("simulate: throttling, 64 workers", [row], COLUMNS)
        rows.append(row)
    return rows
