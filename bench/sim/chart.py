"""docs/sim-scaling.png: requests per message and cursor conflicts against pods, a
line per shard count; needs matplotlib (``pip install -e '.[bench]'``), skipped without."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.common import Row


def scaling_chart(rows: Sequence[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return False
    fig, (cost, conflicts) = plt.subplots(1, 2, figsize=(12, 4.5))
    for shards in sorted({r["shards"] for r in rows}):
        cells = sorted((r for r in rows if r["shards"] == shards), key=lambda r: r["pods"])
        pods = [r["pods"] for r in cells]
        per_msg = [r["requests_per_msg"] for r in cells]
        cost.plot(pods, per_msg, marker="o", label=f"{shards} shards")
        rate = [100 * r["cursor_conflict_rate"] for r in cells]
        conflicts.plot(pods, rate, marker="o", label=f"{shards} shards")
    cost.set_title("S3 requests per message (same load, more pods)")
    cost.set_yscale("log")
    conflicts.set_title("cursor writes that lost their compare-and-swap (%)")
    for ax in (cost, conflicts):
        ax.set_xscale("log")
        ax.set_xlabel("worker pods (8 slots each)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")
    return True
