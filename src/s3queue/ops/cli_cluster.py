"""``s3queue workers``: the worker processes serving a queue, and its coordinator;
``s3queue reshard``: more shards for a running queue.

Registered on the CLI's app when :mod:`s3queue.ops.cli` is imported.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from s3queue.core.catalog import list_queues
from s3queue.ops import workers_view
from s3queue.ops.cli import Command, _Json, app, emit, err, open_queue, options, out, run
from s3queue.storage import open_storage


@app.command(cls=Command)
def workers(
    queue: Annotated[
        str | None, typer.Argument(help="Queue name (default: every queue under the URL).")
    ] = None,
    as_json: _Json = False,
) -> None:
    """The worker processes serving a queue, from their heartbeats, and its coordinator.

    A worker rewrites its heartbeat every heartbeat interval (90 s by default) and
    deletes it when it stops; one not heard from for three intervals is listed as
    dead (killed, or cut off from the store) until the coordinator deletes its
    object, an hour or more later.
    """

    async def main() -> list[dict[str, Any]]:
        names = [queue] if queue is not None else await _queues()
        out_ = []
        for name in names:
            async with await open_queue(name, create=False) as q:
                out_.append(await workers_view.read(q.storage, name, q.clock()))
        return out_

    views = run(main)
    if as_json:
        emit(views)
        return
    for view in views:
        _print(view)


@app.command(cls=Command)
def reshard(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    shards: Annotated[
        int, typer.Option("--shards", metavar="N", help="The queue's new shard count (more).")
    ],
    as_json: _Json = False,
) -> None:
    """Grow a queue to more shards while its producers and workers run.

    Workers learn of the new shards from the coordinator within two heartbeat
    intervals and claim from them at once; producers start writing to them after a
    notice of three (the time is printed), each within 30 s of it. Nothing moves
    and nothing restarts. Fewer shards is refused: producers not yet told would
    keep writing to the shards given up.
    """

    async def main() -> dict[str, Any]:
        async with await open_queue(queue, create=False) as q:
            before = q.settings.shards
            settings = await q.reshard(shards)
            wait = max(0.0, settings.grown_at - q.clock())
        changed = settings.shards != before
        return {
            "queue": queue,
            "shards_before": before,
            "shards": settings.shards,
            "changed": changed,
            "producers_from_seconds": wait if changed else 0.0,
        }

    shown = run(main)
    if as_json:
        emit(shown)
    elif not shown["changed"]:
        out.print(f"queue {queue} has {shown['shards']} shards already")
    else:
        out.print(
            f"queue {queue}: {shown['shards_before']} -> {shown['shards']} shards; workers "
            f"claim from the new ones as they hear of it, producers write to them in "
            f"{shown['producers_from_seconds']:.0f} s"
        )


async def _queues() -> list[str]:
    storage = open_storage(options.url)
    try:
        return await list_queues(storage)
    finally:
        await storage.close()


def _print(view: dict[str, Any]) -> None:
    table = Table(title=f"queue {view['queue']}: workers")
    for column in ("id", "state", "seen", "host", "pid", "running", "version"):
        table.add_column(column, justify="right" if column in ("pid", "running") else "left")
    coordinator = view["coordinator"] or {}
    for row in view["workers"]:
        state = {True: "alive", False: "dead", None: "unknown"}[row["alive"]]
        if row["problem"]:
            state = "unreadable"
        if row["id"] == coordinator.get("id") and coordinator.get("lease_left_seconds", 0) > 0:
            state += ", coordinator"
        seen = "?" if row["seen_seconds_ago"] is None else f"{row['seen_seconds_ago']:.0f} s ago"
        running = "" if row["running"] is None else f"{row['running']}/{row['concurrency']}"
        table.add_row(
            row["id"], state, seen, row["host"] or "", str(row["pid"] or ""), running,
            row["version"] or "",
        )  # fmt: skip
    out.print(table)
    for row in view["workers"]:
        if row["problem"]:
            err.print(f"problem: {row['problem']}", soft_wrap=True)
    if not coordinator:
        out.print("coordinator: none yet (a worker takes the lease when it starts)")
    elif coordinator["lease_left_seconds"] <= 0:
        out.print(
            f"coordinator: none (the lease of {coordinator['id']}, epoch {coordinator['epoch']}, "
            f"ran out {-coordinator['lease_left_seconds']:.0f} s ago; a worker takes it next)"
        )
    else:
        out.print(
            f"coordinator: {coordinator['id']} (epoch {coordinator['epoch']}, "
            f"lease for {coordinator['lease_left_seconds']:.0f} s more)"
        )


__all__ = ["reshard", "workers"]
