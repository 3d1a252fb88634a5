"""``s3queue config`` and ``s3queue sweep``: a queue's retention, and collection by hand.

Registered on the CLI's app when :mod:`s3queue.ops.cli` is imported.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from s3queue.core.retention import Retention
from s3queue.core.sweep import SweepReport
from s3queue.errors import ConfigurationError
from s3queue.ops.cli import Command, _Json, app, emit, open_queue, out, run

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$")


def parse_duration(text: str, option: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(
            f"{option} {text!r} is not a duration",
            suggestion="write a number with a unit: 90s, 15m, 12h, 7d, 2w (no unit: seconds)",
        )
    return float(match[1]) * _UNITS[match[2] or "s"]


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it (as ``config`` prints it)."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


@app.command(cls=Command)
def config(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    result_ttl: Annotated[
        str | None,
        typer.Option(
            "--result-ttl",
            metavar="DURATION",
            help="Keep a finished message's status and result this long (e.g. 7d).",
            show_default=False,
        ),
    ] = None,
    dead_ttl: Annotated[
        str | None,
        typer.Option(
            "--dead-ttl",
            metavar="DURATION",
            help="Keep dead letters this long (e.g. 14d).",
            show_default=False,
        ),
    ] = None,
    as_json: _Json = False,
) -> None:
    """Show a queue's settings, or change its retention (--result-ttl, --dead-ttl)."""

    async def main() -> dict[str, Any]:
        async with await open_queue(queue, create=False) as q:
            if result_ttl is not None or dead_ttl is not None:
                current = Retention.of(q.settings)
                await q.configure(
                    Retention(
                        result_ttl=current.result_ttl
                        if result_ttl is None
                        else parse_duration(result_ttl, "--result-ttl"),
                        dead_ttl=current.dead_ttl
                        if dead_ttl is None
                        else parse_duration(dead_ttl, "--dead-ttl"),
                    )
                )
            s = q.settings
            return {
                "queue": queue,
                "shards": s.shards,
                "max_attempts": s.max_attempts,
                "result_ttl": s.result_ttl,
                "dead_ttl": s.dead_ttl,
                "dedup_retention": s.dedup_retention,
                "blob_threshold": s.blob_threshold,
            }

    shown = run(main)
    if as_json:
        emit(shown)
        return
    out.print(
        f"queue {queue}: {shown['shards']} shards, {shown['max_attempts']} attempts; "
        f"results kept {duration(shown['result_ttl'])}, dead letters "
        f"{duration(shown['dead_ttl'])}, dedup keys {duration(shown['dedup_retention'])}"
    )


@app.command(cls=Command)
def sweep(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    as_json: _Json = False,
) -> None:
    """Run one collection pass now: delete what the queue's retention says is over
    (workers do this in the background) and print what was removed."""

    async def main() -> SweepReport:
        async with await open_queue(queue, create=False) as q:
            return await q.collect()

    report = run(main)
    if as_json:
        emit(report.to_json())
        return
    removed = ", ".join(f"{n} {kind}" for kind, n in report.removed.items() if n)
    out.print(
        f"swept {queue}: removed {report.total} objects"
        + (f" ({removed})" if removed else "")
        + f" in {report.requests} requests"
    )
