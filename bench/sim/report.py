"""A run's figures: throughput, pickup, conflicts, requests, cost, faults."""

from __future__ import annotations

from bench.common import PRICE_READ, PRICE_WRITE, Row, cost_per_million, requests_of
from bench.latency_store import READS_PER_SECOND, WRITES_PER_SECOND
from bench.sim.cluster import Outcome

SECONDS_PER_MONTH = 30 * 24 * 3600

COLUMNS = (
    ("scenario", "scenario"),
    ("pods", "pods"),
    ("shards", "shards"),
    ("rate", "target/s"),
    ("msgs_per_s", "done/s"),
    ("pickup_p50", "p50 s"),
    ("pickup_p99", "p99 s"),
    ("cursor_conflict_rate", "CAS conflicts"),
    ("requests_per_msg", "req/msg"),
    ("requests_per_s", "req/s"),
    ("peak_prefix_writes", "peak W/s/prefix"),
    ("peak_prefix_reads", "peak R/s/prefix"),
    ("slowdowns", "503s"),
    ("cost_per_million_usd", "$/M msgs"),
    ("cost_per_month_usd", "$/month"),
    ("redelivered", "redelivered"),
    ("crashes", "crashes"),
    ("failover_max_s", "failover s"),
    ("adoption_max_s", "adoption s"),
    ("invariants", "invariants"),
    ("cpu_s", "CPU s"),
)


def row(outcome: Outcome, cpu: float) -> Row:
    s, tally, ledger = outcome.scenario, outcome.tally, outcome.ledger
    counts = tally.counts.snapshot()
    done, window = ledger.completed_in_window, outcome.window
    p50, p99 = ledger.pickup_percentiles()
    writes = [n for (_, write, _), n in tally.per_second.items() if write]
    reads = [n for (_, write, _), n in tally.per_second.items() if not write]
    failovers = outcome.watch.failovers()
    dollars = (counts["put"] + counts["conditional_put"] + counts["list"]) * PRICE_WRITE + counts[
        "get"
    ] * PRICE_READ
    return {
        "scenario": s.name,
        "seed": s.seed,
        "pods": s.pods,
        "slots": s.slots,
        "shards": s.shards,
        "rate": s.rate or (f"backlog {s.backlog}" if s.backlog else 0),
        "seconds": s.seconds,
        "window_s": round(window, 3),
        "completed": done,
        "msgs_per_s": round(done / window, 1),
        "pickup_p50": round(p50, 3),
        "pickup_p99": round(p99, 3),
        "cursor_writes": tally.cursor_writes,
        "cursor_conflict_rate": round(tally.cursor_conflicts / max(1, tally.cursor_writes), 4),
        "requests": counts,
        "requests_per_msg": round(requests_of(counts) / done, 3) if done else None,
        "requests_per_s": round(requests_of(counts) / window, 1),
        "peak_prefix_writes": max(writes, default=0),
        "peak_prefix_reads": max(reads, default=0),
        "prefix_limits": {"writes": WRITES_PER_SECOND, "reads": READS_PER_SECOND},
        "slowdowns": tally.faults["slowdown"],
        "faults": dict(tally.faults),
        "cost_per_million_usd": round(cost_per_million(counts, done), 3) if done else None,
        "cost_per_month_usd": round(dollars / window * SECONDS_PER_MONTH, 2),
        "redelivered": ledger.redelivered,
        "crashes": ledger.crashes,
        "coordinators": len(outcome.watch.promotions),
        "failovers_s": [None if f is None else round(f, 1) for f in failovers],
        "failover_max_s": _worst(failovers),
        "adoptions_s": [round(a, 1) for a in outcome.watch.adoptions],
        "adoption_max_s": _worst(list(outcome.watch.adoptions)),
        "never_adopted": len(outcome.watch.orphans),
        "enqueued": outcome.enqueued,
        "enqueue_failures": outcome.enqueue_failures,
        "warnings": dict(outcome.log_levels),
        "invariants": "held" if outcome.broken is None else "BROKEN",
        "broken": None if outcome.broken is None else str(outcome.broken),
        "trace": outcome.trace,
        "store_requests": outcome.requests,
        "cpu_s": round(cpu, 1),
        **_reshard(outcome),
    }


#: Seconds per point of a reshard run's timeline.
STEP = 5


def _reshard(outcome: Outcome) -> Row:
    """A reshard run: outcomes a second in each STEP seconds of the load, the reshard
    and when every worker knew, and the dip: how far the worst step after the
    reshard fell below the mean of the measured steps before it."""
    s = outcome.scenario
    if s.reshard is None:
        return {}
    start, at = outcome.start, s.reshard[0]
    per = outcome.ledger.finished_per_second
    timeline = [
        round(sum(per[int(start) + t + k] for k in range(STEP)) / STEP, 1)
        for t in range(0, int(s.seconds), STEP)
    ]
    before = timeline[int(s.warmup) // STEP : int(at) // STEP]
    after = timeline[int(at) // STEP :]
    mean = sum(before) / max(1, len(before))
    return {
        "timeline_step_s": STEP,
        "timeline": timeline,
        "resharded_at_s": outcome.resharded_at,
        "known_at_s": outcome.known_at,
        "before_per_s": round(mean, 1),
        "after_per_s": round(sum(after[-4:]) / max(1, len(after[-4:])), 1),
        "reshard_dip": round(max(0.0, 1 - min(after, default=mean) / mean), 3) if mean else None,
    }


def _worst(delays: list[float | None]) -> float | str | None:
    """The longest delay; "never" if one never ended; None if there were none."""
    if not delays:
        return None
    if any(d is None for d in delays):
        return "never"
    return round(max(d for d in delays if d is not None), 1)
