"""Exit statuses of short-lived processes on S3: ``python -m bench.exit_status --runs 200``.

Each process does its work and exits; on S3 some used to abort at exit (SIGABRT)
after printing the id they had stored (issue 10). This starts its own moto server,
runs each command ``--runs`` times, in rounds, and reports every non-zero exit by
status or signal, then checks that every id a process printed is stored.

Commands: ``s3queue enqueue``, ``s3queue stats``, ``s3queue worker --burst`` on an
empty queue, a five-line ``asyncio.run`` script (``Queue.open``, ``enqueue``,
``close``) and the same through the blocking client (``connect``), and a task app's
``delay()`` from a script that exits without closing the app (``task``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, Backends, Row, machine, names, print_table
from s3queue import Queue

QUEUE = "exits"
IDLE_QUEUE = "idle"

ASYNC_SCRIPT = """\
import asyncio, sys
from s3queue import Queue
async def main(url, name, n):
    q = await Queue.open(url, name); print(await q.enqueue({"n": n}), flush=True); await q.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

BLOCKING_SCRIPT = """\
import sys
from s3queue import connect
with connect(sys.argv[1], sys.argv[2]) as q:
    print(q.enqueue({"n": int(sys.argv[3])}), flush=True)
"""

TASK_SCRIPT = """\
import sys, s3queue
app = s3queue.App(sys.argv[1])
@app.task(queue=sys.argv[2])
def f(n: int) -> None: ...
print(f.delay(int(sys.argv[3])).message_id, flush=True)
"""

COMMANDS = ("enqueue", "stats", "worker", "script", "blocking", "task")
#: Commands that print the id of the message they enqueued.
PRINTS_ID = ("enqueue", "script", "blocking", "task")

COLUMNS = (
    ("command", "command"),
    ("runs", "runs"),
    ("ok", "exit 0"),
    ("failed", "non-zero"),
    ("statuses", "statuses"),
    ("ids_printed", "ids printed"),
    ("ids_stored", "ids stored"),
)


def handle(payload: Any, ctx: Any) -> None:
    """The burst worker's handler (its queue stays empty)."""


def s3queue_command() -> list[str]:
    beside_python = Path(sys.executable).with_name("s3queue")
    return [str(beside_python)] if beside_python.exists() else [sys.executable, "-m", "s3queue"]


def argv_for(command: str, url: str, n: int, poll_interval: float) -> list[str]:
    cli = [*s3queue_command(), "--url", url]
    if command == "enqueue":
        return [*cli, "enqueue", QUEUE, json.dumps({"n": n})]
    if command == "stats":
        return [*cli, "stats", QUEUE]
    if command == "worker":
        handler = "bench.exit_status:handle"
        return [
            *cli,
            "worker",
            IDLE_QUEUE,
            handler,
            "--burst",
            "--poll-interval",
            str(poll_interval),
        ]
    script = {"script": ASYNC_SCRIPT, "task": TASK_SCRIPT}.get(command, BLOCKING_SCRIPT)
    return [sys.executable, "-c", script, url, QUEUE, str(n)]


def status_name(code: int) -> str:
    if code < 0:
        return signal.Signals(-code).name
    return f"status {code}"


def run_once(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


async def count_stored(url: str, ids: list[str]) -> int:
    q = await Queue.open(url, QUEUE)
    try:
        found = 0
        for start in range(0, len(ids), 50):
            batch = ids[start : start + 50]
            infos = await asyncio.gather(*(q.get(message_id) for message_id in batch))
            found += sum(info is not None for info in infos)
        return found
    finally:
        await q.close()


def run(args: argparse.Namespace, backends: Backends) -> tuple[list[Row], dict[str, Any]]:
    url = backends.url("s3")
    statuses: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in args.only}
    ids: dict[str, list[str]] = {c: [] for c in args.only}
    samples: dict[str, str] = {}
    for n in range(args.runs):
        for command in args.only:
            done = run_once(argv_for(command, url, n, args.poll_interval))
            statuses[command][status_name(done.returncode)] += 1
            if done.returncode != 0:
                samples.setdefault(
                    f"{command}: {status_name(done.returncode)}", done.stderr[-2000:]
                )
            if command in PRINTS_ID and done.stdout.strip():
                ids[command].append(done.stdout.split()[-1])
        if (n + 1) % 10 == 0:
            failed = sum(sum(s.values()) - s["status 0"] for s in statuses.values())
            print(f"round {n + 1}/{args.runs}: {failed} non-zero exits so far", flush=True)
    rows = []
    for command in args.only:
        counts = statuses[command]
        ok = counts.pop("status 0", 0)
        row: Row = {
            "command": command,
            "runs": args.runs,
            "ok": ok,
            "failed": sum(counts.values()),
            "statuses": ", ".join(f"{name} x{k}" for name, k in counts.most_common()) or "-",
        }
        if command in PRINTS_ID:
            row["ids_printed"] = len(ids[command])
            row["ids_stored"] = asyncio.run(count_stored(url, ids[command]))
        rows.append(row)
    return rows, samples


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.exit_status", description=__doc__.splitlines()[0]
    )
    p.add_argument("--runs", type=int, default=200, help="runs of each command")
    p.add_argument(
        "--only", type=names, default=",".join(COMMANDS), help=f"some of {','.join(COMMANDS)}"
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.2,
        help="the burst worker's poll interval (it exits after one empty poll)",
    )
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    unknown = sorted(set(args.only) - set(COMMANDS))
    if unknown:
        raise SystemExit(f"unknown command {unknown[0]!r}: use some of {','.join(COMMANDS)}")
    backends = Backends()
    began = time.monotonic()
    try:
        rows, samples = run(args, backends)
    finally:
        backends.close()
    print_table(f"exit statuses, {args.runs} runs each (moto)", rows, COLUMNS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"exit_status-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "scenario": "exit_status",
        "command": "python -m bench.exit_status " + " ".join(argv),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "rows": rows,
        "stderr_samples": samples,
    }
    path.write_text(json.dumps(document, indent=2))
    print(f"saved {path}")
    print(f"done in {time.monotonic() - began:.0f} s")
    if any(row["failed"] or row.get("ids_printed") != row.get("ids_stored") for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
