"""The examples the README points at run as shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_every_message_to_completion(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    finished = [line for line in result.stdout.splitlines() if ": completed after" in line]
    assert len(finished) == 3  # the dedup key folded two enqueues into one message
    assert "completed after 2 attempt(s)" in result.stdout  # the flaky one was retried
