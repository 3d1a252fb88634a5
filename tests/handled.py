"""A handler for real worker processes started by the tests: every message it
handles appends ``<message id> <pid>`` to the file ``$S3QUEUE_TEST_HANDLED`` names."""

from __future__ import annotations

import os

from s3queue import JobContext


def record(payload: object, ctx: JobContext) -> None:
    # One short O_APPEND write per message: lines of concurrent jobs never interleave.
    with open(os.environ["S3QUEUE_TEST_HANDLED"], "a") as handled:
        handled.write(f"{ctx.message_id} {os.getpid()}\n")
