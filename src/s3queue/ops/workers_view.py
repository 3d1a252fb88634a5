"""The workers of a queue and its coordinator, as ``s3queue workers`` and the
dashboard show them: read from the heartbeats and the cluster object."""

from __future__ import annotations

from typing import Any

from s3queue.core import registry
from s3queue.core.records import Backlog, ClusterRecord
from s3queue.core.registry import Member
from s3queue.storage import Storage

#: A worker whose heartbeat is older than this many of its intervals is dead.
TTL_INTERVALS = 3


async def read(
    storage: Storage, queue: str, now: float, *, details: int | None = None
) -> dict[str, Any]:
    """The view of ``queue``'s cluster at ``now`` (store time): a LIST, the cluster
    object, and the heartbeats of the first ``details`` workers (all with None)."""
    found = await registry.members(storage, queue, details=details)
    record, _ = await registry.read_cluster(storage, queue)
    return view(queue, found, record, now)


def view(
    name: str, members: list[Member], record: ClusterRecord | None, now: float
) -> dict[str, Any]:
    coordinator = None
    if record is not None and record.holder:
        coordinator = {
            "id": record.holder,
            "epoch": record.epoch,
            "lease_left_seconds": round(record.expires_at - now, 1),
        }
    backlog = record.backlog if record is not None else None
    counts = None if backlog is None else backlog_counts(backlog)
    if counts is not None:
        counts["counted_seconds_ago"] = round(now - counts.pop("at"), 1)
    return {
        "queue": name,
        "workers": [_row(member, record, now) for member in members],
        "coordinator": coordinator,
        "backlog": counts,
    }


def backlog_counts(backlog: Backlog) -> dict[str, Any]:
    """The coordinator's last count as JSON (``at``: when, by the store's clock)."""
    return {
        "pending": backlog.pending,
        "delayed": backlog.delayed,
        "processing": backlog.processing,
        "dead": backlog.dead,
        "at": backlog.at,
    }


def _row(member: Member, record: ClusterRecord | None, now: float) -> dict[str, Any]:
    """One worker. Alive: heard from within its TTL (three of its own intervals, or
    the cluster's TTL for a heartbeat listed but not read); None when unknown."""
    beat = member.beat
    age = None if member.modified is None else max(0.0, now - member.modified)
    ttl = TTL_INTERVALS * beat.interval if beat is not None else record.ttl if record else None
    alive = None if member.problem is not None or age is None or not ttl else age <= ttl
    return {
        "id": beat.id if beat is not None else member.key.rsplit("/", 1)[-1],
        "alive": alive,
        "seen_seconds_ago": None if age is None else round(age, 1),
        "host": beat.host if beat else None,
        "pid": beat.pid if beat else None,
        "queues": beat.queues if beat else None,
        "concurrency": beat.concurrency if beat else None,
        "running": beat.running if beat else None,
        "version": beat.version if beat else None,
        "started_at": beat.started_at if beat else None,
        "problem": member.problem,
    }


__all__ = ["TTL_INTERVALS", "backlog_counts", "read", "view"]
