"""The command line's log formats (s3queue/ops/logs.py), on their own."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from s3queue.ops import logs
from s3queue.ops.logs import JsonFormatter, LogFormat, TextFormatter


def record(message: str = "job %s done", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("s3queue.worker", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = json.loads(JsonFormatter().format(record("job %s done", "3-L0-0")))
    assert list(line) == ["time", "level", "logger", "message"]
    assert (line["level"], line["logger"], line["message"]) == (
        "INFO",
        "s3queue.worker",
        "job 3-L0-0 done",
    )
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None  # ISO 8601, UTC


def test_a_json_line_carries_the_records_extra_fields() -> None:
    line = json.loads(
        JsonFormatter().format(record(message_id="3-L0-0", attempt=2, duration=0.25, ok=True))
    )
    assert line["message_id"] == "3-L0-0"
    assert line["attempt"] == 2
    assert line["duration"] == 0.25
    assert line["ok"] is True


def test_an_extra_field_cannot_replace_a_standard_one() -> None:
    line = json.loads(JsonFormatter().format(record("real", level="fake", logger="fake")))
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "s3queue.worker", "real")


def test_values_json_cannot_hold_are_written_as_text() -> None:
    line = json.loads(
        JsonFormatter().format(record(path=object(), ratio=float("nan"), ids=("a", "b")))
    )
    assert line["path"].startswith("<object object")
    assert line["ratio"] == "nan"
    assert line["ids"] == ["a", "b"]


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("handler failed")
        failed.exc_info = sys.exc_info()
    text = JsonFormatter().format(failed)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "handler failed"
    assert "Traceback" in line["exception"]
    assert "ValueError: boom" in line["exception"]


def test_both_formats_redact_message_extras_and_traceback() -> None:
    def hide(text: str) -> str:
        return text.replace("SECRET", "***")

    try:
        raise OSError("cannot reach s3://key:SECRET@bucket")
    except OSError:
        failed = record("url %s", "s3://key:SECRET@bucket", url="s3://key:SECRET@bucket")
        failed.exc_info = sys.exc_info()
    assert "SECRET" not in JsonFormatter(hide).format(failed)
    assert "SECRET" not in TextFormatter(hide).format(failed)
    assert "key:***@bucket" in TextFormatter(hide).format(failed)


def test_the_text_format_is_time_level_logger_message() -> None:
    text = TextFormatter().format(record("job %s done", "3-L0-0"))
    assert text.endswith(" INFO s3queue.worker: job 3-L0-0 done")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("s3queue")
    handlers, level, our_level = root.handlers[:], root.level, ours.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    ours.setLevel(our_level)


@pytest.mark.usefixtures("restored_logging")
def test_configure_shows_s3queue_info_above_a_quieter_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(level=logging.WARNING, s3queue_level=logging.INFO, log_format=LogFormat.json)
    logging.getLogger("s3queue.worker").info("banner")
    logging.getLogger("botocore").info("chatter")
    logging.getLogger("botocore").warning("careful")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["banner", "careful"]


@pytest.mark.usefixtures("restored_logging")
def test_configure_replaces_its_own_handler_and_keeps_others() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    first = logs.configure(
        level=logging.WARNING, s3queue_level=logging.WARNING, log_format=LogFormat.text
    )
    second = logs.configure(
        level=logging.DEBUG, s3queue_level=logging.DEBUG, log_format=LogFormat.json
    )
    assert other in root.handlers
    assert second in root.handlers
    assert first not in root.handlers
    assert root.level == logging.DEBUG
    assert logging.getLogger("s3queue").level == logging.NOTSET  # follows the root


@pytest.mark.usefixtures("restored_logging")
def test_log_lines_go_to_stderr_as_it_is_now(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(level=logging.WARNING, s3queue_level=logging.WARNING, log_format=LogFormat.text)
    logging.getLogger("s3queue").warning("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "to stderr" in captured.err
