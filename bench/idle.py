"""Idle workers: pickup after a quiet spell, and what an idle worker costs.

    python -m bench.idle [--backend s3] [--shards 1,4,16,64] [--trials 30] [--idle-seconds 60]

Pickup: one worker process (``python -m s3queue worker``, poll_interval 1 s, the
default) on a queue of 4 shards waits; this process enqueues one message after a
random quiet spell of 2 to 6 s, ``--trials`` times; the handler writes the time it
started to a file. Pickup = handler start - enqueue return (same machine, one clock).

Idle cost: a worker process per shard count idles; after 10 s (its first look at
every shard is over) the requests it reports on /metrics are read twice,
``--idle-seconds`` apart: requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import ROOT, Backends, Row, ints, names, print_table, save
from s3queue import Queue

HANDLER = """
import os
import time
from pathlib import Path

def note(payload, ctx):
    started = repr(time.time())
    Path(payload["mark"] + ".tmp").write_text(started)
    os.replace(payload["mark"] + ".tmp", payload["mark"])  # seen whole or not at all
"""


def start_worker(url: str, queue: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    """A worker process, and the URL of its metrics."""
    (workdir / "idlehandler.py").write_text(HANDLER)
    command = [
        sys.executable, "-m", "s3queue", "--url", url, "worker", queue, "idlehandler:note",
        "--concurrency", "4", "--poll-interval", "1", "--metrics-port", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{workdir}:{ROOT / 'src'}"}
    worker = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    metrics = worker.stdout.readline().split()[-1]  # "metrics on http://.../metrics"
    worker.stdout.readline()  # "worker ... ready"
    return worker, metrics


def requests_made(metrics: str) -> dict[str, float]:
    """The worker's storage requests so far, by kind, from its /metrics."""
    text = urllib.request.urlopen(metrics, timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("s3queue_storage_requests_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def stop(worker: subprocess.Popen[str]) -> None:
    worker.terminate()
    worker.wait(timeout=60)


async def pickups(url: str, trials: int, workdir: Path) -> list[float]:
    q = await Queue.open(url, "pickup", shards=4)
    worker, _ = start_worker(url, "pickup", workdir)
    waits = []
    try:
        for trial in range(trials):
            await asyncio.sleep(random.uniform(2.0, 6.0))  # the quiet spell under test
            mark = workdir / f"mark-{trial}"
            await q.enqueue({"mark": str(mark)})
            enqueued = time.time()
            while not mark.exists():  # noqa: ASYNC110 - another process: no event to await
                await asyncio.sleep(0.01)
            waits.append(float(mark.read_text()) - enqueued)
    finally:
        stop(worker)
        await q.close()
    return waits


async def idle_cost(url: str, shards: int, seconds: float, workdir: Path) -> Row:
    name = f"idle{shards}"
    await (await Queue.open(url, name, shards=shards)).close()
    worker, metrics = start_worker(url, name, workdir)
    await asyncio.sleep(10)  # past its first look at every shard
    before = requests_made(metrics)
    await asyncio.sleep(seconds)  # idling is what is measured
    after = requests_made(metrics)
    stop(worker)
    made = {kind: after[kind] - before.get(kind, 0) for kind in after}
    total = sum(made.values())
    return {"shards": shards, "seconds": seconds, "requests": total, "get": made["get"],
            "put": made["put"] + made["conditional_put"], "list": made["list"],
            "requests_per_s": round(total / seconds, 3)}  # fmt: skip


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    p.add_argument("--backend", type=names, default="s3")
    p.add_argument("--shards", type=ints, default="1,4,16,64")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    backends = Backends()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend in args.backend:
                waits = sorted(asyncio.run(pickups(backends.url(backend), args.trials, Path(tmp))))
                rows.append({"backend": backend, "measure": "pickup after 2-6 s idle",
                             "median_s": round(statistics.median(waits), 3),
                             "p90_s": round(waits[int(0.9 * (len(waits) - 1))], 3),
                             "max_s": round(waits[-1], 3), "trials": len(waits)})  # fmt: skip
                for shards in args.shards:
                    url = backends.url(backend)
                    row = asyncio.run(idle_cost(url, shards, args.idle_seconds, Path(tmp)))
                    rows.append({"backend": backend, "measure": "idle cost", **row})
    finally:
        backends.close()
    print_table("pickup after idle", [r for r in rows if "median_s" in r],
                [("backend", "backend"), ("trials", "trials"), ("median_s", "median s"),
                 ("p90_s", "p90 s"), ("max_s", "max s")])  # fmt: skip
    print_table("an idle worker's requests", [r for r in rows if "requests_per_s" in r],
                [("backend", "backend"), ("shards", "shards"), ("seconds", "seconds"),
                 ("requests", "requests"), ("get", "GET"), ("put", "PUT"), ("list", "LIST"),
                 ("requests_per_s", "req/s")])  # fmt: skip
    print(f"saved {save('idle', rows, ['idle', *argv])}")


if __name__ == "__main__":
    main(sys.argv[1:])
