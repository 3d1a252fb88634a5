"""A secret in the store URL (``s3://KEY:SECRET@bucket/...``) is never printed.

Every command of the CLI runs against the real S3 server with a URL holding a
distinctive secret, on its happy path, its error paths and with --debug, and
nothing it writes may contain the secret; so for reprs, errors (with their chained
causes), log records, metrics and the dashboard.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import generate_latest

from s3queue import Queue, QueueError, Worker
from s3queue.errors import ConfigurationError
from s3queue.ops import cli
from s3queue.ops.monitor import WorkerMonitor
from s3queue.storage import open_raw_storage, open_storage, redact, redact_url
from s3queue.storage.faults import FaultyStorage
from s3queue.storage.local import LocalStorage
from s3queue.storage.memory import MemoryStorage
from tests.conftest import BUCKET, FAST, pythonpath, run_until
from tests.s3server import S3Server, free_port

KEY_ID = "AKIAS3QUEUETESTKEY01"
# Shaped like an AWS secret: '/' and '+' are the characters users forget to encode.
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYs3qSECRET"
#: Any of these in an output is the secret, or a piece of it, leaking.
PIECES = (SECRET, quote(SECRET, safe=""), *re.split(r"[/+]", SECRET))
CREDENTIALS = f"{KEY_ID}:{quote(SECRET, safe='')}"
TIMEOUT = 120


def leaked(text: str) -> list[str]:
    return [piece for piece in PIECES if piece in text]


def secret_url(server: S3Server, prefix: str, *, bucket: str = BUCKET, extra: str = "") -> str:
    return (
        f"s3://{CREDENTIALS}@{bucket}/{prefix}?endpoint={server.endpoint}&region=us-east-1{extra}"
    )


def s3queue(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3queue", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath(cwd or Path.cwd()), **(env or {})},
    )


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    pieces = leaked(result.stdout + result.stderr)
    assert not pieces, f"{result.args[3:]} printed {pieces}:\n{result.stdout}\n{result.stderr}"


def succeeds(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """What the command printed on stdout; it must succeed and print no secret."""
    result = s3queue(*args, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result)
    return result.stdout


HANDLERS = textwrap.dedent(
    """
    from s3queue import QueueError

    def gone(payload, ctx):
        raise QueueError("410 Gone", retriable=False)
    """
)


# --- the redaction itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3://AKID:s3cr3t@bucket/p?region=x", "s3://AKID:***@bucket/p?region=x"),
        ("s3://AKID:ab%2Fcd@bucket/p", "s3://AKID:***@bucket/p"),
        ("s3://AKID:ab/cd@bucket/p", "s3://AKID:***@bucket/p"),
        ("s3://AKID:ab?cd#ef@bucket/p?region=x", "s3://AKID:***@bucket/p?region=x"),
        ("s3://AKID:a@b@bucket/p", "s3://AKID:***@bucket/p"),
        ("AKID:s3cr3t@bucket/p", "AKID:***@bucket/p"),
        ("s3:/AKID:s3cr3t@bucket", "s3:***@bucket"),
        (
            "s3://bucket/p?secret_access_key=s3cr3t&region=x",
            "s3://bucket/p?secret_access_key=***&region=x",
        ),
        ("s3://bucket/p?session_token=s3cr3t", "s3://bucket/p?session_token=***"),
        ("s3://AKID@bucket/p", "s3://AKID@bucket/p"),
        ("s3://bucket/user@example.com/p", "s3://bucket/user@example.com/p"),
        ("file:///tmp/q", "file:///tmp/q"),
    ],
)
def test_redact_url_hides_the_secret_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_hides_every_url_secret_in_free_text() -> None:
    text = "No such command 's3://AKID:s3cr3t@bucket/p?region=x'. Try 'x://u:pw@h' too."
    assert (
        redact(text) == "No such command 's3://AKID:***@bucket/p?region=x'. Try 'x://u:***@h' too."
    )


def test_redact_hides_a_known_secret_outside_any_url() -> None:
    assert redact("config: secret=s3cr3t!", ["s3cr3t"]) == "config: secret=***!"


# --- errors, reprs, logs and metrics in process ---------------------------------------------


def url_errors(server: S3Server) -> dict[str, str]:
    """URLs that opening refuses, each holding the secret."""
    good = secret_url(server, "p")
    return {
        "bad bucket name": secret_url(server, "p", bucket="bad_bucket"),
        "unknown option": secret_url(server, "p", extra="&regoin=eu"),
        "secret as an option": f"s3://{BUCKET}/p?region=x&secret_access_key={quote(SECRET)}",
        "invalid endpoint": f"s3://{CREDENTIALS}@{BUCKET}/p?endpoint=ftp://nowhere",
        "credentials in the endpoint": good.replace("http://", f"http://{CREDENTIALS}@"),
        "unencoded secret": good.replace(quote(SECRET, safe=""), SECRET),
        "bad flag": secret_url(server, "p", extra="&allow_http=maybe"),
        "no scheme": good.split("://", 1)[1],
        "unknown scheme": "s4://" + good.split("://", 1)[1],
        "one slash": "s3:/" + good.split("://", 1)[1],
    }


def test_every_url_error_names_the_url_without_its_secret(s3_server: S3Server) -> None:
    for what, url in url_errors(s3_server).items():
        with pytest.raises(ConfigurationError) as info:
            open_raw_storage(url)
        printed = "".join(traceback.format_exception(info.value))
        assert not leaked(printed), f"{what}: {printed}"
        assert "***" in str(info.value), f"{what}: {info.value}"


async def test_storage_and_queue_reprs_show_the_url_without_its_secret(
    s3_server: S3Server, tmp_path: Path
) -> None:
    url = secret_url(s3_server, f"repr-{uuid.uuid4().hex[:8]}")
    raw = open_raw_storage(url)
    stores: list[Any] = [raw, open_storage(url), FaultyStorage(raw)]
    stores += [LocalStorage.from_url(f"file://{tmp_path}"), MemoryStorage.named("reprs")]
    queue = await Queue.open(url, "q")
    try:
        for shown in [*stores, queue]:
            text = repr(shown)
            assert not leaked(text), text
            expected = shown.storage.url if isinstance(shown, Queue) else shown.url
            assert expected in text, text
            assert KEY_ID not in text
    finally:
        await queue.close()


async def run_to_the_end(queue: Queue, handler: Callable[..., Any], messages: int) -> Worker:
    """Run a worker until ``messages`` messages have finished, one way or the other."""
    worker = Worker(queue, handler, polling=FAST)
    finished = await run_until(worker, "completed", "dead", count=messages)
    assert sorted(event.name for event in finished) == ["completed", "dead"]
    return worker


async def test_queue_and_worker_logs_and_metrics_hold_no_secret(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    queue = await Queue.open(secret_url(s3_server, f"logs-{uuid.uuid4().hex[:8]}"), "q")
    try:
        await queue.enqueue({"ok": True})
        await queue.enqueue({"ok": False})

        async def handler(payload: dict[str, bool], ctx: Any) -> None:
            if not payload["ok"]:
                raise QueueError("410 Gone", retriable=False)

        worker = await run_to_the_end(queue, handler, 2)
        metrics = generate_latest(WorkerMonitor(worker).registry).decode()
        assert "s3queue_jobs_finished" in metrics
        assert not leaked(metrics)
    finally:
        await queue.close()
    assert caplog.records, "the run should have logged something"
    for record in caplog.records:
        text = record.getMessage() + (caplog.handler.format(record) if record.exc_info else "")
        assert not leaked(text), text


# --- the command line ------------------------------------------------------------------------


def test_no_command_prints_the_secret(s3_server: S3Server, tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    url = secret_url(s3_server, f"cli-{uuid.uuid4().hex[:8]}")

    def ok(*args: str) -> str:
        return succeeds("--url", url, "--log-level", "debug", *args, cwd=tmp_path)

    assert "created queue q" in ok("create", "q", "--shards", "2")
    message_id = ok("enqueue", "q", '{"to": "ada@example.com"}').strip()
    assert message_id
    assert "ready on q" in ok("worker", "q", "handlers:gone", "--burst", "--poll-interval", "0.05")
    assert "dead" in ok("stats", "q")
    assert "shard" in ok("stats", "q", "--shards")
    assert json.loads(ok("stats", "q", "--json"))["dead"] == 1
    assert "410 Gone" in ok("inspect", "q", message_id)
    assert json.loads(ok("inspect", "q", message_id, "--json"))["status"] == "dead"
    assert [d["id"] for d in json.loads(ok("dead", "q", "--json"))] == [message_id]
    hint = ok("dead", "q")
    assert f"--url 's3://{KEY_ID}:***@{BUCKET}/" in hint
    assert "redrive q" in hint
    assert f"{message_id} -> " in ok("redrive", "q")
    refused = s3queue("--url", url, "purge", "q")
    assert refused.returncode != 0
    assert_no_secret(refused)
    assert "purged q" in ok("purge", "q", "--yes")
    assert "q" in ok("queues").split()


def test_a_url_from_the_environment_is_not_printed_and_the_hint_needs_none(
    s3_server: S3Server, tmp_path: Path
) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    env = {"S3QUEUE_URL": secret_url(s3_server, f"env-{uuid.uuid4().hex[:8]}")}
    assert succeeds("enqueue", "q", "1", env=env).strip()
    worker = ["worker", "q", "handlers:gone", "--burst", "--poll-interval", "0.05"]
    assert "ready on q" in succeeds(*worker, env=env, cwd=tmp_path)
    assert "S3QUEUE_URL" in succeeds("--help", env=env)
    assert "Usage" in succeeds("stats", "--help", env=env)
    assert "redrive them with: s3queue redrive q\n" in succeeds("dead", "q", env=env)
    refused = s3queue("stats", "q", env={"S3QUEUE_URL": env["S3QUEUE_URL"] + "&regoin=x"})
    assert "regoin" in refused.stderr
    assert_no_secret(refused)


def test_the_dashboard_serves_no_secret(s3_server: S3Server) -> None:
    url = secret_url(s3_server, f"board-{uuid.uuid4().hex[:8]}")
    assert succeeds("--url", url, "enqueue", "q", "1").strip()
    board = subprocess.Popen(
        [sys.executable, "-m", "s3queue", "--url", url, "dashboard", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert board.stdout is not None
        line = board.stdout.readline()
        assert line.startswith("dashboard on http://"), line
        base = line.split()[2]
        for path in ("", "api/queues", "api/queues/q/dead", "api/queues/nope/dead"):
            try:
                with urllib.request.urlopen(base + path, timeout=30) as answer:
                    body = answer.read().decode()
            except urllib.error.HTTPError as error:  # the 404 names the store
                body = error.read().decode()
            assert not leaked(body), body
        board.send_signal(signal.SIGTERM)
        out, err = board.communicate(timeout=60)
    finally:
        board.kill()
    assert not leaked(line + out + err)


def test_the_redrive_hint_repeats_only_what_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3QUEUE_URL", raising=False)
    monkeypatch.setattr(cli.options, "url", cli.DEFAULT_URL)
    assert cli.redrive_command("q") == "s3queue redrive q"
    monkeypatch.setattr(cli.options, "url", "file:///srv/queues")
    assert cli.redrive_command("q") == "s3queue --url file:///srv/queues redrive q"
    monkeypatch.setattr(cli.options, "url", f"s3://{CREDENTIALS}@{BUCKET}/p")
    hint = cli.redrive_command("q")
    assert hint.startswith(f"s3queue --url 's3://{KEY_ID}:***@{BUCKET}/p' redrive q")
    assert "S3QUEUE_URL" in hint
    assert not leaked(hint)
    monkeypatch.setenv("S3QUEUE_URL", cli.options.url)
    assert cli.redrive_command("q") == "s3queue redrive q"


def cli_mistakes(url: str) -> dict[str, list[str]]:
    """Command lines that the CLI or its parser refuses, each holding the secret."""
    return {
        "unknown CLI option": ["--url", url, "stats", "q", "--bogus"],
        "bad option value": ["--url", url, "stats", "q", "--watch", "--interval", "soon"],
        "forgotten --url": [url, "stats", "q"],
        "bad log level": ["--url", url, "--log-level", "loud", "stats", "q"],
    }


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_no_error_prints_the_secret(s3_server: S3Server, debug: bool) -> None:
    flag = ["--debug"] if debug else []
    urls = url_errors(s3_server)
    urls["missing bucket"] = secret_url(s3_server, "p", bucket="no-such-bucket-x")
    nowhere = f"http://127.0.0.1:{free_port()}"
    urls["unreachable endpoint"] = f"s3://{CREDENTIALS}@{BUCKET}/p?endpoint={nowhere}"
    refused = {what: ["--url", url, "enqueue", "q", "1"] for what, url in urls.items()}
    refused |= cli_mistakes(secret_url(s3_server, "p"))
    for what, args in refused.items():
        result = s3queue(*flag, *args)
        assert result.returncode != 0, what
        assert ("traceback" if debug else "error") in result.stderr.lower(), what
        assert_no_secret(result)


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_refused_credentials_are_not_printed(strict_s3: S3Server, debug: bool) -> None:
    url = secret_url(strict_s3, "p")
    result = s3queue(*(["--debug"] if debug else []), "--url", url, "enqueue", "q", "1")
    assert result.returncode != 0
    assert "denied" in result.stderr or "Denied" in result.stderr, result.stderr
    assert_no_secret(result)
