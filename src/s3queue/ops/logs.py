"""The command line's log output: human text or one JSON object per line, on stderr.

Invariant: every line passes through the ``redact`` function it was configured with
(the command line's scrubber of the store URL's secret), the message, the traceback
and each extra field alike, so that no format prints what the other hides. stdout
is left to the commands' data.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

Redact = Callable[[str], str]


class LogFormat(StrEnum):
    """What --log-format takes."""

    text = "text"
    json = "json"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The attributes every LogRecord has; the others came from ``extra=`` and are the
#: record's own fields (``message`` and ``asctime`` are set while formatting).
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _keep(text: str) -> str:
    return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, redacted."""

    def __init__(self, redact: Redact = _keep) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, then the record's extra fields, then ``exception`` (the traceback)
    when it has one. An extra field named like one of those is left out rather than
    allowed to replace it; a value JSON cannot hold is written as its ``str``."""

    def __init__(self, redact: Redact = _keep) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in line and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(self._redacted(line))

    def _redacted(self, value: Any) -> Any:
        # Field by field, before encoding: a secret JSON would escape could slip
        # past a search of the encoded line.
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(str(k)): self._redacted(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redacted(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # JSON has no NaN or Infinity
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact(str(value))


class StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever ``sys.stderr`` is when a record comes (a redirect, a test's
    capture), not to the stream it was when the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr


#: The handler :func:`configure` installed last, replaced by the next call (the
#: tests run the command line many times in one process).
_installed: logging.Handler | None = None


def configure(
    *, level: int, s3queue_level: int, log_format: LogFormat, redact: Redact = _keep
) -> logging.Handler:
    """Log records of ``level`` and above, and of ``s3queue_level`` and above from
    s3queue's own loggers, to stderr in ``log_format``. Handlers others attached (a test
    framework's) are left alone."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = StderrHandler()
    handler.setFormatter(
        JsonFormatter(redact) if log_format is LogFormat.json else TextFormatter(redact)
    )
    root.addHandler(handler)
    root.setLevel(level)
    # NOTSET: s3queue's loggers follow the root's level unless asked for more.
    s3queue = logging.getLogger("s3queue")
    s3queue.setLevel(s3queue_level if s3queue_level < level else logging.NOTSET)
    _installed = handler
    return handler
