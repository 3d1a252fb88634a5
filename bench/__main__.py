"""Benchmark runner: ``python -m bench <scenario> [options]``; see docs/BENCHMARKS.md.

Scenarios: ``e2e`` (a backlog drained by P worker processes x C slots), ``enqueue``
(producer throughput), ``latency`` (enqueue to handler start at low load), ``simulate``
(25 ms per request and S3's per-prefix limits), ``all`` (all four with their defaults,
about 12 minutes on 2 cores), and, not part of ``all``, ``ratelimit`` (a backlog
drained under a queue-wide rate limit, and without it: about 3 minutes for both
backends) and ``retention`` (a drain, then the workers sweep until the queue is back
at its floor: several minutes per backend). Each scenario writes
bench/results/<scenario>-<time>.json
and prints a table; ``e2e`` with more than one cell also draws the chart.

Examples::

    python -m bench all
    python -m bench e2e --backend s3 --procs 4 --concurrency 8 --handler noop
    python -m bench latency --backend s3 --seconds 20
    python -m bench simulate --shards-grid 4 --sim-procs 1,4
    python -m bench ratelimit --backend s3,file --rate-limit 50/s --rate-messages 3000
    python -m bench retention --backend file,s3 --retention-messages 100000
    python -m bench e2e --backend s3 --procs 4 --concurrency 8 --handler noop \
        --sweep-interval 2 --result-ttl 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import e2e, enqueue, latency, ratelimit, retention, simulate
from bench.chart import throughput_chart
from bench.common import RESULTS, Backends, Row, ints, names, save

SCENARIOS: dict[str, Callable[[Any, Backends], list[Row]]] = {
    "e2e": e2e.run,
    "enqueue": enqueue.run,
    "latency": latency.run,
    "simulate": simulate.run,
    "ratelimit": ratelimit.run,
    "retention": retention.run,
}
#: What ``all`` runs (``make bench``).
ALL = ("e2e", "enqueue", "latency", "simulate")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="s3queue benchmarks (see docs/BENCHMARKS.md)"
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument(
        "--backend",
        type=names,
        default="s3,file",
        help="comma-separated: s3 (moto), file, seaweedfs, azure (Azurite)",
    )
    _e2e_options(p.add_argument_group("e2e"))
    _model_options(p)
    _retention_options(p.add_argument_group("retention (the first two also apply to e2e)"))
    return p


def _e2e_options(e: argparse._ArgumentGroup) -> None:
    e.add_argument("--messages", type=int, default=20000, help="messages per cell, at most")
    e.add_argument(
        "--exact",
        action="store_true",
        help="every cell runs --messages (default: ~625 per slot, 1,000 to --messages)",
    )
    e.add_argument("--procs", type=ints, default="1,2,4", help="worker processes")
    e.add_argument("--concurrency", type=ints, default="1,8,32", help="slots per process")
    e.add_argument(
        "--handler",
        type=names,
        default="noop,sleep10",
        help="noop, sleep10, task (a no-op task sent with enqueue())",
    )
    e.add_argument("--shards", type=int, default=4)
    e.add_argument("--profile-dir", default="", help="pyinstrument profile of every worker")
    e.add_argument(
        "--chart",
        default="",
        help="where to draw the chart (default bench/results/throughput-<time>.png; "
        "make bench draws docs/bench-throughput.png)",
    )


def _model_options(p: argparse.ArgumentParser) -> None:
    """The latency, simulate and ratelimit scenarios' options."""
    lat = p.add_argument_group("latency")
    lat.add_argument("--seconds", type=float, default=20.0, help="at 10 messages per second")
    s = p.add_argument_group("simulate")
    s.add_argument("--shards-grid", type=ints, default="1,4,16")
    s.add_argument("--sim-procs", type=ints, default="1,4,8")
    s.add_argument("--sim-concurrency", type=int, default=8)
    s.add_argument("--sim-messages", type=int, default=6000)
    s.add_argument("--latency-ms", type=float, default=25.0)
    s.add_argument(
        "--limit-scale",
        type=float,
        default=0.01,
        help="S3 limits x this in the throttling run (1 skips that run)",
    )
    s.add_argument("--stress-shards", type=int, default=4)
    r = p.add_argument_group("ratelimit")
    r.add_argument("--rate-limit", default="50/s", help="on the whole queue")
    r.add_argument("--rate-procs", type=int, default=4, help="worker processes")
    r.add_argument("--rate-messages", type=int, default=3000)


def _retention_options(t: argparse._ArgumentGroup) -> None:
    t.add_argument(
        "--sweep-interval",
        type=float,
        default=None,
        help="workers sweep every S seconds (e2e: default no sweeping; retention: 15)",
    )
    t.add_argument(
        "--result-ttl",
        type=float,
        default=None,
        help="the queue's Retention(result_ttl=S) (e2e: default the queue's; retention: 60)",
    )
    t.add_argument("--retention-messages", type=int, default=100_000)
    t.add_argument("--retention-procs", type=int, default=4, help="worker processes")
    t.add_argument(
        "--retention-wait",
        type=float,
        default=1800.0,
        help="seconds after the drain to wait at most for the floor",
    )


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    scenarios = list(ALL) if args.scenario == "all" else [args.scenario]
    backends = Backends()
    began = time.monotonic()
    try:
        for scenario in scenarios:
            rows = SCENARIOS[scenario](args, backends)
            print(f"saved {save(scenario, rows, argv)}")
            if scenario == "e2e" and len(rows) > 1:
                default = RESULTS / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.png"
                throughput_chart(rows, Path(args.chart) if args.chart else default)
    finally:
        backends.close()
    print(f"done in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
