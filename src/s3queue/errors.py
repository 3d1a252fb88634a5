"""Every error s3queue raises, rooted at :class:`QueueError`.

The kind is the API: callers branch on the class (and on ``retriable``), never on
message text. Each error a user can cause says what happened and what to do next.
Storage backends translate their native exceptions (obstore, OS) into these at the
boundary, so nothing outside ``s3queue.storage`` ever sees them.
"""

from __future__ import annotations

from typing import Any


class QueueError(Exception):
    """Root of every s3queue error.

    ``retriable`` tells the caller whether the same call may succeed later;
    ``suggestion`` is the fix, in one sentence, for a human.
    """

    default_retriable = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retriable: bool | None = None,
        suggestion: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retriable = self.default_retriable if retriable is None else retriable
        self.suggestion = suggestion
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __str__(self) -> str:
        if self.suggestion:
            return f"{self.message} ({self.suggestion})"
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "status_code": self.status_code,
            "retriable": self.retriable,
            "suggestion": self.suggestion,
            "metadata": self.metadata,
        }


class ConfigurationError(QueueError):
    """A URL, name, option or setting is wrong; retrying the same call cannot help."""

    default_retriable = False


class PayloadError(QueueError):
    """A payload cannot be stored: not JSON-serialisable, or over the size limit."""

    default_retriable = False


class QueueNotFound(QueueError):
    """A read-only command named a queue that does not exist (nothing was created)."""

    default_retriable = False


class CorruptData(QueueError):
    """An object in the queue's prefix cannot be read as what it should be: damaged,
    truncated, written by hand or by another program. ``metadata["key"]`` names it."""

    default_retriable = False


class JobTimeout(QueueError):
    """A handler ran longer than the worker's ``job_timeout``; counts as a failed attempt."""


class JobFailed(QueueError):
    """A task's job ended dead: every attempt failed, or one failed for good.

    ``errors`` has one entry per failed attempt (``attempt``, ``type``, ``message``,
    ``traceback``, ``worker``), oldest first; ``job_id`` names the job.
    """

    default_retriable = False

    def __init__(self, message: str, *, job_id: str, errors: list[Any], **more: Any) -> None:
        super().__init__(message, metadata={"id": job_id}, **more)
        self.job_id = job_id
        self.errors = errors


class JobCancelled(QueueError):
    """A task's job was cancelled before it finished: it has no result."""

    default_retriable = False


class JobNotFound(QueueError):
    """No job has this id in its queue (never enqueued there, or purged)."""

    default_retriable = False


class JobExpired(QueueError):
    """A task's job finished longer ago than its queue keeps results (``result_ttl``,
    or ``dead_ttl`` for a dead one): its result and status were collected."""

    default_retriable = False


class LeaseLost(QueueError):
    """The lease expired and the message may belong to another worker now (fencing).

    Raised by ``ack``, ``fail`` and ``extend`` with a stale lease; nothing was changed.
    """

    default_retriable = False


class StorageError(QueueError):
    """Object storage refused or failed a request."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (412) or a concurrent conditional
    write was in flight (409). Re-read and retry; no data was lost."""


class AmbiguousWrite(PreconditionFailed):
    """A conditional write was retried after an attempt whose outcome was unknown
    (timeout, reset), and the retry's condition failed.

    The first attempt may have landed and since been overwritten. Callers that can
    recognise their own commit (a token they wrote into the body) must re-read and
    look for it; callers whose objects are immutable may treat this as a conflict.
    """


class NotFound(StorageError):
    """The bucket (or another required object) does not exist."""

    default_retriable = False


class Throttled(StorageError):
    """The store asked us to slow down (503 SlowDown) and retries were exhausted."""


class StorageUnavailable(StorageError):
    """The store could not be reached or failed (5xx, timeout, reset) after retries."""


class StorageAuthError(StorageError):
    """Credentials are missing, wrong, or lack permission for this bucket."""

    default_retriable = False
