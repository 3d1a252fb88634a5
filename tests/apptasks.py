"""Tasks for the multi-process tests of the task app: every completed run of ``step``
appends one line (its label, message id and attempt) to ``$S3QUEUE_TEST_RUNS``."""

from __future__ import annotations

import json
import os
import time

import s3queue

app = s3queue.App()


@app.task(name="step", max_attempts=5)
def step(value: int, label: str) -> int:
    time.sleep(0.1)  # long enough for a kill -9 to land in the middle of some runs
    ctx = s3queue.current_job()
    line = json.dumps({"label": label, "id": ctx.message_id, "attempt": ctx.attempt})
    # One short O_APPEND write per run: lines of concurrent runs never interleave.
    with open(os.environ["S3QUEUE_TEST_RUNS"], "a") as runs:
        runs.write(line + "\n")
    return value + 1
