"""A handler for real worker processes started by the tests: every message it
handles appends ``<message id> <pid>`` to the file ``$S3QUEUE_TEST_HANDLED`` names."""

from __future__ import annotations

import os
import time

from s3queue import JobContext


def record(payload: object, ctx: JobContext) -> None:
    # One short O_APPEND write per message: lines of concurrent jobs never interleave.
    with open(os.environ["S3QUEUE_TEST_HANDLED"], "a") as handled:
        handled.write(f"{ctx.message_id} {os.getpid()}\n")


def record_slowly(payload: object, ctx: JobContext) -> None:
    """:func:`record`, after 20 ms of work: a worker killed meanwhile holds jobs."""
    time.sleep(0.02)  # the simulated job
    record(payload, ctx)
