"""Handlers for the command-line examples of the README, run from the checkout:

    s3queue worker emails examples.handlers:send_email --burst

(``s3queue worker`` imports ``module:function`` with the current directory on the
path, as ``python -m`` does.)
"""

from __future__ import annotations

from typing import Any

from s3queue import JobContext


def send_email(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A sync handler: runs in the worker's thread pool."""
    return {"sent_to": payload["to"], "attempt": ctx.attempt}


if __name__ == "__main__":
    print(__doc__)
