"""Which live worker owns which shard: rendezvous (highest random weight) hashing.

Every worker computes the same answer from the same list of live workers, with no
coordination: shard k goes to the worker whose hash of (queue, k, worker id) is
highest, unless that worker has its fair share already (bounded loads). When a
worker joins or leaves, few shards besides the ones it gains or held change hands,
so caches and claim rhythms elsewhere mostly stay as they were. Ownership is
advice: a cursor write is fenced by its compare-and-swap whoever makes it, so two
workers that briefly disagree about an owner cost a conflict, never a duplicate.

Pure: no I/O, no clock (tests/test_cluster.py checks balance and stability).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
from collections.abc import Iterable, Sequence

#: Pairs per shard tried first (see :func:`_owners`).
TOP = 8


def weight(queue: str, shard: int, worker: str) -> int:
    """The worker's draw for the shard: 64 bits of BLAKE2b (the same on every
    machine and Python, unlike ``hash()``)."""
    digest = hashlib.blake2b(f"{queue}\0{shard}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(
    queue: str, shards: int, workers: Iterable[str], *, grown_from: int = 0
) -> list[str | None]:
    """The owner of each shard (None for every shard when there are no workers).

    After a reshard, the shards the queue had (``grown_from``) and the ones added
    are shared out separately, each fairly: the old shards keep the owners they
    had, so the ones carrying the backlog do not change hands (nor bunch on a few
    workers) while the new ones are still empty."""
    members = tuple(sorted(set(workers)))
    if not 0 < grown_from < shards:
        return list(_owners(queue, 0, shards, members))
    return [*_owners(queue, 0, grown_from, members), *_owners(queue, grown_from, shards, members)]


@functools.lru_cache(maxsize=64)
def _owners(queue: str, first: int, end: int, members: tuple[str, ...]) -> tuple[str | None, ...]:
    """The owners of shards ``first`` to ``end`` - 1."""
    # Cached: every worker of a cluster reads the same list, and 1,000 workers on
    # 256 shards are 256,000 hashes (a few tenths of a second) per change.
    shards = end - first
    if not members:
        return (None,) * shards
    # Bounded loads: plain rendezvous leaves a worker of four on four shards owning
    # none a third of the time. So the (shard, worker) pairs are taken strongest
    # first, each worker up to its quota: shards // workers, one more for the first
    # shards % workers workers to fill theirs. Everyone owns its fair share (one
    # shard or none when there are more workers than shards), and a change of
    # members still moves few shards: the strong pairs stay strongest.
    base, extra = divmod(shards, len(members))
    # Each shard's few strongest pairs nearly always suffice; all of them if not.
    for top in (TOP, len(members)):
        pairs = sorted(
            (
                pair
                for k in range(first, end)
                for pair in heapq.nlargest(
                    top, ((weight(queue, k, w), w, k - first) for w in members)
                )
            ),
            reverse=True,
        )
        owner = _fill(pairs, shards, members, base, extra)
        if None not in owner:
            break
    return tuple(owner)


def _fill(
    pairs: list[tuple[int, str, int]], shards: int, members: tuple[str, ...], base: int, extra: int
) -> list[str | None]:
    """Give each shard to the worker of its strongest pair that has room."""
    load = dict.fromkeys(members, 0)
    owner: list[str | None] = [None] * shards
    for _, worker, shard in pairs:
        if owner[shard] is not None or load[worker] > base:
            continue
        if load[worker] == base:
            if extra == 0:
                continue
            extra -= 1
        owner[shard] = worker
        load[worker] += 1
    return owner


def owned(
    queue: str, shards: int, workers: Sequence[str], me: str, *, grown_from: int = 0
) -> frozenset[int]:
    """The shards ``me`` owns among ``workers`` (``me`` counted whether listed or not:
    a worker that just started owns its share before anyone lists it)."""
    by_shard = owners(queue, shards, [*workers, me], grown_from=grown_from)
    return frozenset(k for k, owner in enumerate(by_shard) if owner == me)


__all__ = ["owned", "owners", "weight"]
