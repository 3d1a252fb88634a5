"""s3queue: a distributed job queue whose only infrastructure is object storage."""

from s3queue.errors import (
    AmbiguousWrite,
    ConfigurationError,
    LeaseLost,
    NotFound,
    PayloadError,
    PreconditionFailed,
    QueueError,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    Throttled,
)

__version__ = "0.1.0"

__all__ = [
    "AmbiguousWrite",
    "ConfigurationError",
    "LeaseLost",
    "NotFound",
    "PayloadError",
    "PreconditionFailed",
    "QueueError",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "Throttled",
    "__version__",
]
