"""Benchmark runner: ``python -m bench <scenario> [options]``.

Scenarios: ``e2e`` (enqueue then drain with P worker processes x C concurrency),
``enqueue`` (producer throughput), ``latency`` (enqueue-to-start at low load),
``simulate`` (25 ms per request and S3's per-prefix limits), ``all`` (the default
set; about 10 minutes on 2 cores). Each run writes bench/results/<scenario>-<time>.json
and prints a table. Results and commands are recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from s3queue import Queue, Worker
from s3queue.storage import RetryingStorage, open_raw_storage

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KINDS = ("get", "put", "conditional_put", "delete", "list")
#: AWS S3 Standard list prices, dollars per request.
PRICE_WRITE = 0.005 / 1000  # PUT, COPY, POST, LIST
PRICE_READ = 0.0004 / 1000  # GET
SQS_PER_MILLION_MESSAGES = 0.40 * 3  # send + receive + delete, unbatched


def cost_per_million(counts: dict[str, int], messages: int) -> float:
    writes = counts["put"] + counts["conditional_put"] + counts["list"]
    dollars = writes * PRICE_WRITE + counts["get"] * PRICE_READ
    return dollars / messages * 1_000_000


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}


# --- backends --------------------------------------------------------------------------------


class Backends:
    """Fresh queue URLs on the local directory or on a moto server started here."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="s3queue-bench-")
        self._moto: Any = None

    def url(self, backend: str) -> str:
        unique = uuid.uuid4().hex[:8]
        if backend == "file":
            return f"file://{self._tmp.name}/{unique}"
        if backend == "s3":
            if self._moto is None:
                sys.path.insert(0, str(ROOT))
                from tests.s3server import start_s3_server

                os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
                self._moto = start_s3_server(Path(self._tmp.name) / "moto.log")
                self._moto.create_bucket("bench")
            return str(self._moto.url("bench", unique))
        raise SystemExit(f"unknown backend {backend!r}: use file or s3")

    def close(self) -> None:
        if self._moto is not None:
            self._moto.stop()
        self._tmp.cleanup()


def add(total: dict[str, int], counts: dict[str, int]) -> None:
    for kind in (*KINDS, "precondition_failed", "throttled"):
        total[kind] = total.get(kind, 0) + int(counts.get(kind, 0))


# --- end to end --------------------------------------------------------------------------------


def queue_storage(url: str, latency_ms: float, share: float = 1.0) -> Any:
    raw = open_raw_storage(url)
    if latency_ms > 0:
        from bench.latency_store import LatencyStore

        raw = LatencyStore(raw, latency_ms, share)
    return RetryingStorage(raw)


async def produce(url: str, messages: int, shards: int, latency_ms: float) -> dict[str, Any]:
    q = await Queue.open(queue_storage(url, latency_ms), "bench", shards=shards)
    started = time.perf_counter()
    batches = [
        [{"n": n} for n in range(s, min(messages, s + 100))] for s in range(0, messages, 100)
    ]
    gate = asyncio.Semaphore(8)

    async def write(batch: list[dict[str, int]]) -> None:
        async with gate:
            await q.enqueue_many(batch)

    await asyncio.gather(*(write(b) for b in batches))
    elapsed = time.perf_counter() - started
    counts = q.storage.counts.snapshot()
    await q.close()
    return {"seconds": elapsed, "counts": counts}


async def wait_completed(url: str, messages: int, limit: float) -> float:
    q = await Queue.open(url, "bench", verify_store=False)
    started = time.perf_counter()
    try:
        while (await q.stats()).completed < messages:
            if time.perf_counter() - started > limit:
                raise SystemExit(f"drain did not finish within {limit} s")
            await asyncio.sleep(0.1)  # watching other processes
        return time.perf_counter() - started
    finally:
        await q.close()


def e2e_cell(
    backends: Backends,
    backend: str,
    *,
    messages: int,
    procs: int,
    concurrency: int,
    handler: str,
    shards: int = 4,
    latency_ms: float = 0.0,
) -> dict[str, Any]:
    url = backends.url(backend)
    producer = asyncio.run(produce(url, messages, shards, latency_ms))
    reports = [Path(tempfile.mkstemp(suffix=".json")[1]) for _ in range(procs)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.worker",
                url,
                "bench",
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
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for report in reports
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        seconds = asyncio.run(wait_completed(url, messages, limit=600))
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=120)
    totals: dict[str, int] = {}
    add(totals, producer["counts"])
    processed = handler_errors = slowdowns = 0
    for report in reports:
        data = json.loads(report.read_text())
        report.unlink()
        add(totals, data)
        processed += data["processed"]
        handler_errors += data["handler_errors"]
        slowdowns += data["slowdowns"]
    requests = sum(totals[k] for k in KINDS)
    return {
        "backend": backend,
        "messages": messages,
        "procs": procs,
        "concurrency": concurrency,
        "handler": handler,
        "shards": shards,
        "latency_ms": latency_ms,
        "enqueue_seconds": round(producer["seconds"], 3),
        "drain_seconds": round(seconds, 3),
        "msgs_per_s": round(messages / seconds, 1),
        "requests_per_msg": round(requests / messages, 4),
        "requests": totals,
        "cost_per_million_usd": round(cost_per_million(totals, messages), 4),
        "processed": processed,
        "handler_errors": handler_errors,
        "slowdowns_retried": slowdowns,
    }


E2E_COLUMNS = (
    "backend",
    "handler",
    "procs",
    "concurrency",
    "shards",
    "latency_ms",
    "messages",
    "msgs_per_s",
    "drain_seconds",
    "requests_per_msg",
    "cost_per_million_usd",
    "slowdowns_retried",
    "handler_errors",
)


def print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)))


def save(scenario: str, rows: list[dict[str, Any]], argv: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "scenario": scenario,
                "command": "python -m bench " + " ".join(argv),
                "machine": machine(),
                "sqs_per_million_usd": SQS_PER_MILLION_MESSAGES,
                "rows": rows,
            },
            indent=2,
        )
    )
    return path


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def run_e2e(args: argparse.Namespace, backends: Backends) -> list[dict[str, Any]]:
    rows = []
    for backend in args.backend.split(","):
        for handler in args.handler.split(","):
            for procs in ints(args.procs):
                for concurrency in ints(args.concurrency):
                    messages = min(args.messages, max(1000, 500 * procs * concurrency))
                    row = e2e_cell(
                        backends,
                        backend,
                        messages=messages,
                        procs=procs,
                        concurrency=concurrency,
                        handler=handler,
                        shards=args.shards,
                    )
                    print_table([row], E2E_COLUMNS)
                    rows.append(row)
    return rows


def run_simulate(args: argparse.Namespace, backends: Backends) -> list[dict[str, Any]]:
    rows = []
    for shards in ints(args.shards_grid):
        for procs in ints(args.procs):
            row = e2e_cell(
                backends,
                "file",
                messages=args.messages,
                procs=procs,
                concurrency=args.concurrency_sim,
                handler="sleep10",
                shards=shards,
                latency_ms=args.latency_ms,
            )
            print_table([row], E2E_COLUMNS)
            rows.append(row)
    return rows


# --- producer throughput -------------------------------------------------------------------------


async def enqueue_case(url: str, mode: str, messages: int) -> dict[str, Any]:
    q = await Queue.open(url, "bench", shards=4)
    q.storage.counts.reset()
    started = time.perf_counter()
    if mode == "single-1":
        for n in range(messages):
            await q.enqueue({"n": n})
    elif mode == "single-64":
        per_task = messages // 64

        async def task(t: int) -> None:
            for n in range(per_task):
                await q.enqueue({"n": t * per_task + n})

        await asyncio.gather(*(task(t) for t in range(64)))
        messages = per_task * 64
    else:
        size = int(mode.split("-")[1])
        for start in range(0, messages, size):
            await q.enqueue_many([{"n": n} for n in range(start, min(messages, start + size))])
    elapsed = time.perf_counter() - started
    counts = q.storage.counts.snapshot()
    await q.close()
    return {
        "mode": mode,
        "messages": messages,
        "msgs_per_s": round(messages / elapsed, 1),
        "requests_per_msg": round(counts["total"] / messages, 4),
        "cost_per_million_usd": round(cost_per_million(counts, messages), 4),
    }


def run_enqueue(args: argparse.Namespace, backends: Backends) -> list[dict[str, Any]]:
    rows = []
    cases = {
        "single-1": 500,
        "single-64": 6400,
        "many-10": 5000,
        "many-100": 20000,
        "many-1000": 20000,
    }
    for backend in args.backend.split(","):
        for mode, messages in cases.items():
            row = {
                "backend": backend,
                **asyncio.run(enqueue_case(backends.url(backend), mode, messages)),
            }
            print_table(
                [row],
                (
                    "backend",
                    "mode",
                    "messages",
                    "msgs_per_s",
                    "requests_per_msg",
                    "cost_per_million_usd",
                ),
            )
            rows.append(row)
    return rows


# --- latency ------------------------------------------------------------------------------------


async def latency_case(url: str, poll: float, seconds: float, rate: float) -> dict[str, Any]:
    producer = await Queue.open(url, "bench", shards=4)
    consumer = await Queue.open(url, "bench", verify_store=False)
    returned: dict[str, float] = {}
    started: dict[str, float] = {}

    async def handler(payload: Any, ctx: Any) -> None:
        started[ctx.message_id] = time.time()

    worker = Worker(consumer, handler, concurrency=8, poll_interval=poll, max_poll_interval=poll)
    task = asyncio.create_task(worker.run())
    count = int(seconds * rate)
    for _ in range(count):
        mid = await producer.enqueue({"t": time.time()})
        returned[mid] = time.time()
        await asyncio.sleep(1 / rate)  # the offered load
    all_started = asyncio.Event()
    if len(started) >= count:
        all_started.set()
    waiting_for = count

    def check(event: Any) -> None:
        if len(started) >= waiting_for:
            all_started.set()

    worker.on("completed", check)
    await asyncio.wait_for(all_started.wait(), 60)
    await worker.stop()
    await task
    await producer.close()
    await consumer.close()
    waits = sorted(max(0.0, started[m] - returned[m]) * 1000 for m in returned)

    def pct(p: float) -> float:
        return round(waits[min(len(waits) - 1, int(p * len(waits)))], 1)

    return {
        "poll_interval": poll,
        "messages": count,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(waits[-1], 1),
        "mean_ms": round(statistics.fmean(waits), 1),
    }


def run_latency(args: argparse.Namespace, backends: Backends) -> list[dict[str, Any]]:
    rows = []
    for backend in args.backend.split(","):
        for poll in (0.1, 1.0):
            row = {
                "backend": backend,
                **asyncio.run(latency_case(backends.url(backend), poll, args.seconds, 10.0)),
            }
            print_table(
                [row],
                ("backend", "poll_interval", "messages", "p50_ms", "p90_ms", "p99_ms", "max_ms"),
            )
            rows.append(row)
    return rows


# --- chart ---------------------------------------------------------------------------------------


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for backend in sorted({r["backend"] for r in rows}):
        for handler in sorted({r["handler"] for r in rows}):
            cells = [r for r in rows if r["backend"] == backend and r["handler"] == handler]
            if not cells:
                continue
            labels = [f"{r['procs']}x{r['concurrency']}" for r in cells]
            ax.plot(
                labels, [r["msgs_per_s"] for r in cells], marker="o", label=f"{backend}, {handler}"
            )
    ax.set_xlabel("worker processes x concurrency")
    ax.set_ylabel("messages per second")
    ax.set_title("s3queue end-to-end throughput (2 cores)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenario", choices=["e2e", "enqueue", "latency", "simulate", "all"])
    parser.add_argument("--backend", default="s3,file")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--handler", default="noop,sleep10")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shards-grid", default="1,4,16")
    parser.add_argument("--concurrency-sim", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chart", default=str(ROOT / "docs" / "bench-throughput.png"))
    args = parser.parse_args(argv)
    backends = Backends()
    try:
        scenarios = (
            ["e2e", "enqueue", "latency", "simulate"] if args.scenario == "all" else [args.scenario]
        )
        for scenario in scenarios:
            if scenario == "simulate" and args.scenario == "all":
                args.procs, args.messages = "1,4,8", 3000
            runner = {
                "e2e": run_e2e,
                "enqueue": run_enqueue,
                "latency": run_latency,
                "simulate": run_simulate,
            }
            rows = runner[scenario](args, backends)
            print(f"saved {save(scenario, rows, argv)}")
            if scenario == "e2e" and len(rows) > 1:
                chart(rows, Path(args.chart))
    finally:
        backends.close()


if __name__ == "__main__":
    main(sys.argv[1:])
