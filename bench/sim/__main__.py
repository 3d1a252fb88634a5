"""Simulation runner: ``python -m bench.sim SCENARIO [options]``; see docs/SIMULATION.md.

Scenarios (bench/sim/scenario.py): ``steady``, ``bursty``, ``idle``, ``crash``
(10% of pods crash and restart), ``ambiguous`` (5% of writes applied with the
answer lost), ``spike`` (latency x10 for 10 s), ``faults`` (all of them at once,
with handler failures and clock skew) and ``backlog`` (bench simulate's drain).
``--pods`` and ``--shards`` take lists and run every pair; ``--seeds K`` runs K
seeds from ``--seed`` for each pair. Every run checks the invariants; a broken one
prints its seed and the request log around it, and the command exits 1. Results go
to bench/results/sim-<scenario>-<time>.json.

Examples::

    python -m bench.sim steady --pods 1,10,100 --shards 16
    python -m bench.sim faults --pods 100 --rate 10 --seconds 10 --warmup 5 --seeds 200 --jobs 2
    python -m bench.sim backlog --seeds 5
    python -m bench.sim idle --pods 100 --shards 16 --seconds 600
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import Row, ints, print_table, save
from bench.sim.cluster import simulate
from bench.sim.report import COLUMNS, row
from bench.sim.scenario import SCENARIOS, Scenario, scenario


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--pods", type=ints, help="worker pods (a list runs each)")
    p.add_argument("--shards", type=ints, help="shards of the queue (a list runs each)")
    p.add_argument("--seconds", type=float, help="simulated seconds of load")
    p.add_argument("--warmup", type=float, help="seconds before measuring")
    p.add_argument("--rate", type=float, help="target enqueues per second in all")
    p.add_argument("--rate-per-pod", type=float, help="target rate = this x pods")
    p.add_argument("--producers", type=int, help="producer pods")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    p.add_argument("--chart", type=Path, help="draw throughput and conflicts to this PNG")
    return p


def cells(args: argparse.Namespace) -> list[Scenario]:
    base = SCENARIOS[args.scenario]
    changes = {
        key: value
        for key, value in (
            ("seconds", args.seconds),
            ("warmup", args.warmup),
            ("rate", args.rate),
            ("producers", args.producers),
        )
        if value is not None
    }
    out = []
    pods, shards = args.pods or [base.pods], args.shards or [base.shards]
    for p, n, k in itertools.product(pods, shards, range(args.seeds)):
        rate = args.rate_per_pod * p if args.rate_per_pod else changes.get("rate", base.rate)
        fields = {**changes, "pods": p, "shards": n, "seed": args.seed + k, "rate": rate}
        out.append(scenario(args.scenario, **fields))
    return out


def run_one(s: Scenario) -> tuple[Row, list[str]]:
    started = time.process_time()
    outcome = simulate(s)
    return row(outcome, time.process_time() - started), outcome.window_lines


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    todo, rows, broken = cells(args), [], 0
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else _Inline() as pool:
        for result, lines in pool.map(run_one, todo):
            rows.append(result)
            print(_progress(result), flush=True)
            if result["broken"]:
                broken += 1
                _explain(result, lines)
    print_table(f"sim {args.scenario}", rows, COLUMNS)
    if len(rows) > 1:
        _summary(rows)
    path = save(f"sim-{args.scenario}", rows, ["sim", *argv])
    print(f"saved {path}")
    if args.chart:
        from bench.sim.chart import scaling_chart

        scaling_chart(rows, args.chart)
    return 1 if broken else 0


def _explain(result: Row, lines: list[str]) -> None:
    print(f"INVARIANT BROKEN with seed {result['seed']}: {result['broken']}")
    seed, trace = result["seed"], result["trace"]
    print(f"reproduce: the same command with --seed {seed} --seeds 1 (trace {trace})")
    print("the requests on its shard since the message first started:")
    for line in lines:
        print("   ", line)


def _progress(r: Row) -> str:
    return (
        f"{r['scenario']} pods={r['pods']} shards={r['shards']} seed={r['seed']}: "
        f"{r['msgs_per_s']} msg/s, invariants {r['invariants']}, trace {r['trace']}, "
        f"CPU {r['cpu_s']} s"
    )


def _summary(rows: list[Row]) -> None:
    held = sum(r["invariants"] == "held" for r in rows)
    traces = len({r["trace"] for r in rows})
    cpu = sum(r["cpu_s"] for r in rows)
    print(f"{len(rows)} runs: invariants held in {held}; {traces} distinct traces; CPU {cpu:.0f} s")


class _Inline:
    """``ProcessPoolExecutor``'s ``map`` in this process (for --jobs 1)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, items: list[Scenario]) -> Any:
        return map(fn, items)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
