"""s3queue: a distributed job queue whose only infrastructure is object storage."""

from s3queue.app.app import App, Chain, Group, Signature, Task, chain, group
from s3queue.app.jobs import ChainJob, GroupJob, Job
from s3queue.app.router import current_job
from s3queue.backoff import Backoff
from s3queue.client import BlockingQueue, connect
from s3queue.core.rates import RateLimit
from s3queue.core.retention import Retention
from s3queue.core.sweep import SweepReport
from s3queue.errors import (
    AmbiguousWrite,
    ConfigurationError,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobNotFound,
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
from s3queue.info import CancelOutcome, Failure, Lease, MessageInfo, Stats
from s3queue.queue import Queue
from s3queue.runtime.cron import Cron
from s3queue.runtime.worker import JobContext, Worker, WorkerEvent
from s3queue.runtime.worker_settings import Leases, Polling, Scaling
from s3queue.version import __version__

__all__ = [
    "AmbiguousWrite",
    "App",
    "Backoff",
    "BlockingQueue",
    "CancelOutcome",
    "Chain",
    "ChainJob",
    "ConfigurationError",
    "Cron",
    "Failure",
    "Group",
    "GroupJob",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
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
    "Retention",
    "Scaling",
    "Signature",
    "Stats",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "SweepReport",
    "Task",
    "Throttled",
    "Worker",
    "WorkerEvent",
    "__version__",
    "chain",
    "connect",
    "current_job",
    "group",
]
