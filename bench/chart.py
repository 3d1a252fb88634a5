"""The throughput chart (docs/bench-throughput.png); needs matplotlib, skipped without."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.common import Row


def throughput_chart(rows: Sequence[Row], path: Path) -> bool:
    """One panel per backend: msg/s against processes x concurrency, a line per
    handler. Returns False (and says so) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return False
    backends = sorted({r["backend"] for r in rows})
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4.5), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        for handler in sorted({r["handler"] for r in rows}):
            cells = [r for r in rows if r["backend"] == backend and r["handler"] == handler]
            if not cells:
                continue
            labels = [f"{r['procs']}x{r['concurrency']}" for r in cells]
            ax.plot(labels, [r["msgs_per_s"] for r in cells], marker="o", label=handler)
        ax.set_title(
            {"s3": "S3 API (moto_server on loopback)", "file": "local directory"}.get(
                backend, backend
            )
        )
        ax.set_xlabel("worker processes x concurrency per process")
        ax.set_ylabel("messages per second")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="handler")
    fig.suptitle("s3queue end-to-end throughput, 2 cores, no-op and 10 ms handlers")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}")
    return True
