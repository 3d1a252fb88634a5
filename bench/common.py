"""What every scenario shares: prices, request accounting, backends, tables, results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: Billed request kinds, as ``RequestCounts.snapshot()`` names them.
KINDS = ("get", "put", "conditional_put", "delete", "list")
#: Outcomes, counted beside the requests (a throttled or conflicting request is
#: already counted as a request of its kind).
OUTCOMES = ("precondition_failed", "throttled", "retried")

#: AWS S3 Standard list prices, dollars per request.
PRICE_WRITE = 0.005 / 1000  # PUT, COPY, POST, LIST
PRICE_READ = 0.0004 / 1000  # GET
PRICE_DELETE = 0.0  # DELETE is free
#: SQS standard: $0.40 per million requests; a message needs send, receive, delete.
SQS_PER_MILLION = 0.40 * 3
SQS_BATCHED_PER_MILLION = 0.40 * 3 / 10  # every request a full batch of 10

Row = dict[str, Any]


def cost_per_million(counts: Mapping[str, int], messages: int) -> float:
    """Dollars per million messages at S3 Standard list prices."""
    writes = counts.get("put", 0) + counts.get("conditional_put", 0) + counts.get("list", 0)
    dollars = (
        writes * PRICE_WRITE
        + counts.get("get", 0) * PRICE_READ
        + counts.get("delete", 0) * PRICE_DELETE
    )
    return dollars / max(1, messages) * 1_000_000


def requests_of(counts: Mapping[str, int]) -> int:
    return sum(int(counts.get(kind, 0)) for kind in KINDS)


def per_message(counts: Mapping[str, int], messages: int) -> dict[str, float]:
    """Requests per message, by kind and in total."""
    out = {kind: round(counts.get(kind, 0) / max(1, messages), 4) for kind in KINDS}
    out["total"] = round(requests_of(counts) / max(1, messages), 4)
    return out


def add_counts(total: dict[str, int], counts: Mapping[str, Any]) -> None:
    for kind in (*KINDS, *OUTCOMES):
        total[kind] = total.get(kind, 0) + int(counts.get(kind, 0))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class Backends:
    """Fresh queue URLs: ``file`` (a new temporary directory per queue), or a server
    started here on first use with one bucket and a new prefix per queue: ``s3``
    (moto_server), ``seaweedfs`` and ``azure`` (Azurite)."""

    NAMES = ("file", "s3", "seaweedfs", "azure")

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="s3queue-bench-")
        self._servers: dict[str, Any] = {}

    def url(self, backend: str) -> str:
        unique = uuid.uuid4().hex[:8]
        if backend == "file":
            return f"file://{self._tmp.name}/{unique}"
        if backend not in self.NAMES:
            raise SystemExit(f"unknown backend {backend!r}: use {', '.join(self.NAMES)}")
        if backend not in self._servers:
            if str(ROOT) not in sys.path:
                sys.path.insert(0, str(ROOT))
            self._servers[backend] = self._start(backend, Path(self._tmp.name) / backend)
        return str(self._servers[backend].url("bench", unique))

    @staticmethod
    def _start(backend: str, directory: Path) -> Any:
        directory.mkdir()
        if backend == "azure":
            from tests.azurite import start_azurite

            azurite = start_azurite(directory)
            azurite.create_container("bench")
            return azurite
        if backend == "seaweedfs":
            from tests.seaweed import start_seaweed

            server: Any = start_seaweed(directory, "bench")
        else:
            from tests.s3server import start_s3_server

            server = start_s3_server(directory / "moto.log")
            server.create_bucket("bench")
        # S3 servers here accept any credentials; worker processes inherit these.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        return server

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._tmp.cleanup()


def release(workers: list[subprocess.Popen[str]]) -> float:
    """Wait until every worker process says it is ready, then tell them all to go at
    once (start-up stays outside the clock); when they were told (wall clock)."""
    for worker in workers:
        assert worker.stdout is not None
        if (line := worker.stdout.readline().strip()) != "ready":
            raise SystemExit(f"a worker process did not start (said {line!r})")
    go_wall = time.time()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    return go_wall


def stop_workers(workers: Sequence[subprocess.Popen[str]]) -> None:
    """SIGTERM every worker still running, then wait (killing one that hangs)."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and value < 1e6:
            return f"{int(value):,}"
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, rows: Sequence[Row], columns: Sequence[tuple[str, str]]) -> None:
    """``columns``: (row key, heading). Rich when it is there, plain text otherwise."""
    cells = [[fmt(row.get(key, "")) for key, _ in columns] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        heads = [head for _, head in columns]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
        print(title)
        print("  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)))
        for line in cells:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for _, head in columns:
        table.add_column(head, justify="right")
    for line in cells:
        table.add_row(*line)
    Console(width=200).print(table)


def save(scenario: str, rows: Sequence[Row], argv: Sequence[str], **extra: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "scenario": scenario,
        "command": "python -m bench " + " ".join(argv),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "prices_usd": {
            "write_per_request": PRICE_WRITE,
            "get_per_request": PRICE_READ,
            "delete_per_request": PRICE_DELETE,
            "sqs_per_million_messages": SQS_PER_MILLION,
            "sqs_batched_per_million_messages": SQS_BATCHED_PER_MILLION,
        },
        **extra,
        "rows": list(rows),
    }
    path.write_text(json.dumps(document, indent=2))
    return path
