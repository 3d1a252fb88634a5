"""``s3queue demo`` (and ``make demo``): the main job on the embedded default.

A producer enqueues simulated webhook deliveries into a local-directory queue while
worker processes (``s3queue worker``) deliver them: a few milliseconds of work each,
about 5% fail once with a retriable 503, about 0.5% fail for good with 410 Gone and
end as dead letters. A live view shows progress; a summary ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from s3queue import sources
from s3queue.errors import QueueError
from s3queue.info import Stats
from s3queue.queue import Queue
from s3queue.runtime.worker import JobContext

QUEUE = "demo"
EVENTS = ("order.created", "order.paid", "order.shipped", "invoice.sent", "user.signed_up")


class DeliveryFailed(Exception):
    """The receiving endpoint answered with a server error: worth retrying."""


async def deliver_webhook(payload: dict[str, Any], ctx: JobContext) -> None:
    """The demo's handler: sign the body and 'POST' it to the endpoint.

    It returns nothing: a returned value is stored as the message's result, which
    costs one PUT per message (see docs/ARCHITECTURE.md)."""
    await asyncio.sleep(sources.uniform(0.002, 0.008))  # the simulated HTTP round trip
    body = json.dumps(payload["body"], sort_keys=True).encode()
    signature = hashlib.sha256(body).hexdigest()
    if payload["url"].endswith("/gone"):
        raise QueueError(f"410 Gone from {payload['url']}", retriable=False)
    if sources.chance() < 0.05:
        raise DeliveryFailed(f"503 Service Unavailable from {payload['url']}")
    if not signature:
        raise DeliveryFailed("could not sign the body")


def make_jobs(count: int) -> list[dict[str, Any]]:
    rng = random.Random(42)
    jobs = []
    for n in range(count):
        host = f"https://hooks.customer-{rng.randrange(200)}.example"
        path = "/gone" if rng.random() < 0.005 else "/webhook"
        jobs.append(
            {
                "url": host + path,
                "event": rng.choice(EVENTS),
                "body": {"id": n, "amount_cents": rng.randrange(100, 100_000)},
            }
        )
    return jobs


def _view(stats: Stats, total: int, enqueued: int, started: float) -> Table:
    elapsed = max(1e-6, sources.monotonic() - started)
    finished = stats.completed + stats.dead
    table = Table(
        title=f"s3queue demo: {total} webhook deliveries, {enqueued} enqueued, "
        f"{100 * finished // max(1, total)}% finished"
    )
    # The status names of the API and of `s3queue stats`.
    for column in ("pending", "delayed", "processing", "retried", "completed", "dead", "msg/s"):
        table.add_column(column, justify="right")
    table.add_row(
        str(stats.pending),
        str(stats.delayed),
        str(stats.processing),
        str(stats.retried),
        str(stats.completed),
        str(stats.dead),
        f"{finished / elapsed:,.0f}",
    )
    return table


def worker_command(url: str, concurrency: int, report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "s3queue",
        "--url",
        url,
        "--log-level",
        "info",
        "worker",
        QUEUE,
        "s3queue.ops.demo:deliver_webhook",
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        "0.05",
        "--backoff-initial",
        "0.2",
        "--backoff-max",
        "1.0",
        "--report-counts",
        str(report),
    ]


def run_demo(
    *, jobs: int, workers: int, concurrency: int, directory: Path, console: Console
) -> None:
    directory = directory.resolve()
    if directory.exists():
        shutil.rmtree(directory)  # the demo's own scratch queue, recreated each run
    directory.mkdir(parents=True)
    url = f"file://{directory / 'store'}"
    asyncio.run(_create(url))
    console.print(
        f"queue [bold]{QUEUE}[/] in {url}: {jobs} jobs, {workers} worker processes x {concurrency}"
    )
    reports = [directory / f"worker-{i}.json" for i in range(workers)]
    # Each worker logs a line per job: to a file of its own, so the live view stays
    # readable; the summary says where.
    logs = [directory / f"worker-{i}.log" for i in range(workers)]
    with contextlib.ExitStack() as files:
        procs = [
            subprocess.Popen(
                worker_command(url, concurrency, report),
                stdout=subprocess.DEVNULL,
                stderr=files.enter_context(log.open("wb")),
            )
            for report, log in zip(reports, logs, strict=True)
        ]
        try:
            elapsed, stats, requests = asyncio.run(_produce_and_watch(url, jobs, procs, console))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
    for report in reports:
        if report.exists():
            requests += json.loads(report.read_text())["total"]
    # A live display redirected to a file ends without a newline: without this, the
    # summary's title would be glued to the last table's border.
    console.line()
    summary = Table(title="summary")
    summary.add_column("")
    summary.add_column("", justify="right")
    for label, value in (
        ("jobs", jobs),
        ("completed", stats.completed),
        ("dead letters", stats.dead),
        ("retried attempts", stats.retried),
        ("wall time", f"{elapsed:.1f} s"),
        ("throughput", f"{jobs / elapsed:,.0f} jobs/s"),
        ("storage requests per job", f"{requests / jobs:.3f} (producer and workers)"),
        ("worker exit codes", ", ".join(map(str, codes))),
    ):
        summary.add_row(label, str(value))
    console.print(summary)
    command = _s3queue_command()
    console.print(f"each worker's log, a line per job:  {directory}/worker-N.log", soft_wrap=True)
    console.print(
        f"inspect the dead letters with:  {command} --url '{url}' dead {QUEUE}", soft_wrap=True
    )


def _s3queue_command() -> str:
    """How to run s3queue from here: plain ``s3queue`` when the one on PATH is this
    installation's (an activated venv), else the path to it (``make demo`` does not
    activate .venv for the shell it returns to)."""
    ours = Path(sys.executable).parent / "s3queue"
    if shutil.which("s3queue") == str(ours) or not ours.exists():
        return "s3queue"
    try:
        return str(ours.relative_to(Path.cwd()))
    except ValueError:
        return str(ours)


async def _create(url: str) -> None:
    q = await Queue.open(url, QUEUE, shards=4)
    await q.close()


async def _produce_and_watch(
    url: str, jobs: int, procs: list[subprocess.Popen[bytes]], console: Console
) -> tuple[float, Stats, int]:
    q = await Queue.open(url, QUEUE)
    # The live view reads through its own client so the producer's request count
    # stays the producer's.
    view = await Queue.open(url, QUEUE, verify_store=False)
    started = sources.monotonic()
    payloads = make_jobs(jobs)
    enqueued = 0
    try:
        with Live(console=console, auto_refresh=False) as live:
            for start in range(0, jobs, 100):
                await q.enqueue_many(payloads[start : start + 100])
                enqueued = min(jobs, start + 100)
                if start % 1000 == 0:
                    live.update(_view(await view.stats(), jobs, enqueued, started), refresh=True)
            while True:
                stats = await view.stats()
                live.update(_view(stats, jobs, enqueued, started), refresh=True)
                active = stats.pending + stats.delayed + stats.processing
                if stats.completed + stats.dead >= jobs and active == 0:
                    break
                if any(p.poll() is not None for p in procs):
                    raise QueueError(
                        "a worker process exited early",
                        suggestion="its log, worker-N.log in the demo's directory, says why",
                    )
                await asyncio.sleep(0.25)  # the live view's refresh period
        return sources.monotonic() - started, stats, q.storage.counts.total
    finally:
        await q.close()
        await view.close()
