"""Every ``--json`` output has the fields docs/CLI.md documents for it, no fewer and
no more: the page is the schema scripts are written against."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from s3queue import Queue

DOC = (Path(__file__).resolve().parent.parent / "docs" / "CLI.md").read_text()


def documented(command: str) -> str:
    start = DOC.index(f"### `{command}`")
    end = DOC.find("\n### ", start + 1)
    return DOC[start : end if end >= 0 else len(DOC)]


def example(command: str) -> Any:
    """The JSON example of ``command``'s section (the last one: a section may show
    a simpler form first)."""
    blocks = re.findall(r"```json\n(.*?)```", documented(command), flags=re.S)
    return json.loads(blocks[-1])


def table_fields(command: str) -> set[str]:
    """The fields a section's table names (a row may name two: `a`, `b`)."""
    rows = re.findall(r"^\| (`[^|]+) \|", documented(command), flags=re.M)
    return {name for row in rows for name in re.findall(r"`(\w+)`", row)}


def keys(value: Any) -> set[str]:
    return set(value[0] if isinstance(value, list) else value)


def s3queue(url: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "s3queue", "--url", url, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr  # doctor exits 1 while problems remain
    return json.loads(done.stdout)


@pytest.fixture
async def url(tmp_path: Path) -> str:
    """A queue with a completed message, a pending one and a dead letter."""
    url = f"file://{tmp_path / 'store'}"
    q = await Queue.open(url, "emails", shards=1)
    await q.enqueue_many([{"n": 1}, {"n": 2}])
    done, dead = await q.claim(2, 30)
    await q.ack(done, {"sent": True})
    await q.fail(dead, "no such mailbox", retriable=False)
    await q.enqueue({"n": 3})
    await q.settle()
    await q.close()
    return url


def test_the_documented_fields_are_the_printed_ones(url: str, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"n": 4}\n{"n": 5}\n')
    message = table_fields("inspect")
    assert keys(s3queue(url, "enqueue", "emails", '{"n": 6}')) == {"id"}
    assert keys(s3queue(url, "enqueue", "emails", "--file", str(jobs))) == keys(example("enqueue"))
    assert keys(s3queue(url, "create", "emails")) == keys(example("create"))
    stats = s3queue(url, "stats", "emails", "--shards")
    assert keys(stats) == keys(example("stats"))
    assert keys(stats["shards"]) == keys(example("stats")["shards"])
    assert keys(s3queue(url, "inspect", "emails", "0-L0-0")) == message
    assert keys(s3queue(url, "cancel", "emails", "0-L0-0", "0-L1-0")) == keys(example("cancel"))
    assert keys(s3queue(url, "cancel", "emails", "0-L1-0")) == table_fields("cancel")
    [letter] = s3queue(url, "dead", "emails")
    assert keys(letter) == message
    assert keys(s3queue(url, "redrive", "emails")) == {"id", "redriven_to"}
    assert keys(s3queue(url, "doctor", "emails")) == keys(example("doctor"))
    assert keys(s3queue(url, "queues")) == keys(example("queues"))
    grown = s3queue(url, "reshard", "emails", "--shards", "8")
    assert keys(grown) == keys(example("reshard"))
    [workers] = s3queue(url, "workers", "emails")
    assert keys(workers) == keys(example("workers"))
    assert workers["workers"] == []
    assert workers["coordinator"] is None
    assert keys(s3queue(url, "config", "emails")) == keys(example("config"))
    changed = s3queue(url, "config", "emails", "--result-ttl", "2d", "--dead-ttl", "30d")
    assert (changed["result_ttl"], changed["dead_ttl"]) == (2 * 86400.0, 30 * 86400.0)
    swept = s3queue(url, "sweep", "emails")
    assert keys(swept) == keys(example("sweep"))
    assert keys(swept["removed"]) == keys(example("sweep")["removed"])
    assert keys(s3queue(url, "purge", "emails", "--yes")) == keys(example("purge"))
    assert keys(s3queue(url, "delete", "emails", "--yes")) == keys(example("delete"))


def test_a_problem_is_documented_as_printed(url: str, tmp_path: Path) -> None:
    cursor = tmp_path / "store" / "emails" / "shards" / "0000" / "cursor"
    cursor.write_bytes(b"garbage")
    [problem] = s3queue(url, "stats", "emails")["problems"]
    assert keys(problem) == keys(example("stats")["problems"])
    [finding] = s3queue(url, "doctor", "emails")["problems"]
    assert keys(finding) == keys(example("doctor")["problems"])
