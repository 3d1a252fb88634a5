"""s3queue: a distributed job queue whose only infrastructure is object storage."""

from s3queue.backoff import Backoff
from s3queue.client import BlockingQueue, connect
from s3queue.core.rates import RateLimit
from s3queue.errors import (
    AmbiguousWrite,
    ConfigurationError,
    JobTimeout,
    LeaseLost,
    NotFound,
    PayloadError,
    PreconditionFailed,
    QueueError,
    QueueNotFound,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    Throttled,
)
from s3queue.info import Failure, Lease, MessageInfo, Stats
from s3queue.queue import Queue
from s3queue.runtime.cron import Cron
from s3queue.runtime.worker import JobContext, Worker, WorkerEvent
from s3queue.runtime.worker_settings import Leases, Polling, Scaling
from s3queue.version import __version__

__all__ = [
    "AmbiguousWrite",
    "Backoff",
    "BlockingQueue",
    "ConfigurationError",
    "Cron",
    "Failure",
    "JobContext",
    "JobTimeout",
    "Lease",
    "LeaseLost",
    "Leases",
    "MessageInfo",
    "NotFound",
    "PayloadError",
    "Polling",
    "PreconditionFailed",
    "Queue",
    "QueueError",
    "QueueNotFound",
    "RateLimit",
    "Scaling",
    "Stats",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "Throttled",
    "Worker",
    "WorkerEvent",
    "__version__",
    "connect",
]
