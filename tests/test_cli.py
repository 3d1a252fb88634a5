"""The command line, end to end in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BUCKET, pythonpath
from tests.s3server import S3Server

TIMEOUT = 120


def cli(url: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3queue", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath(cwd or Path.cwd())},
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_enqueue_prints_an_id_that_inspect_shows_pending(url: str) -> None:
    enqueued = cli(url, "enqueue", "emails", '{"to": "ada@example.com"}', "--priority", "3")
    assert enqueued.returncode == 0, enqueued.stderr
    message_id = enqueued.stdout.strip()
    shown = cli(url, "inspect", "emails", message_id, "--json")
    info = json.loads(shown.stdout)
    assert info["status"] == "pending"
    assert info["payload"] == {"to": "ada@example.com"}
    assert info["priority"] == 3


def test_enqueue_file_reports_count_and_stats_json_agrees(url: str, tmp_path: Path) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text("\n".join(json.dumps({"n": n}) for n in range(1200)) + "\n\n")
    result = cli(url, "enqueue", "bulk", "--file", str(lines))
    assert result.returncode == 0, result.stderr
    assert "enqueued 1200 messages" in result.stdout
    stats = json.loads(cli(url, "stats", "bulk", "--json").stdout)
    assert stats["pending"] == 1200
    assert stats["completed"] == 0


def test_a_bad_line_in_the_file_enqueues_nothing(url: str, tmp_path: Path) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"n": 1}\n{"n": \n')
    line = one_line_error(cli(url, "enqueue", "bulk", "--file", str(lines)))
    assert "line 2" in line
    assert "no queue named 'bulk'" in one_line_error(cli(url, "stats", "bulk", "--json"))


def test_bad_json_payload_is_one_line(url: str) -> None:
    assert "invalid JSON" in one_line_error(cli(url, "enqueue", "q", "{not json"))


def test_bad_url_is_one_line() -> None:
    assert "unknown storage scheme" in one_line_error(cli("nope://x", "stats", "q"))


def test_invalid_queue_name_is_one_line(url: str) -> None:
    assert "invalid queue name" in one_line_error(cli(url, "stats", "no/slashes"))


def test_missing_handler_module_is_one_line(url: str) -> None:
    line = one_line_error(cli(url, "worker", "q", "nowhere_to_be_found:handler"))
    assert "nowhere_to_be_found" in line


def test_negative_prefetch_is_one_line(url: str) -> None:
    result = cli(url, "worker", "q", "json:dumps", "--prefetch", "-1")
    assert "prefetch" in one_line_error(result)
    assert result.returncode == 2


def test_bad_cron_is_one_line(url: str) -> None:
    result = cli(url, "worker", "q", "json:loads", "--cron", "every day at noon")
    assert "--cron" in one_line_error(result)
    assert result.returncode == 2


def test_unknown_message_is_exit_1(url: str) -> None:
    cli(url, "enqueue", "q", "1")
    result = cli(url, "inspect", "q", "0-L99-0")
    assert result.returncode == 1
    assert "no message 0-L99-0" in result.stderr


def test_cancel_says_what_it_did_to_each_id(url: str) -> None:
    pending = cli(url, "enqueue", "q", '{"x": 1}').stdout.strip()
    done = cli(url, "cancel", "q", pending)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{pending}: cancelled (cancelled; it will not run)\n"
    again = json.loads(cli(url, "cancel", "q", pending, "--json").stdout)
    assert again == [
        {
            "id": pending,
            "status": "finished",
            "detail": "already cancelled",
            "finished_status": "cancelled",
        }
    ]
    assert json.loads(cli(url, "inspect", "q", pending, "--json").stdout)["status"] == "cancelled"
    assert json.loads(cli(url, "stats", "q", "--json").stdout)["cancelled"] == 1


def test_cancel_of_an_unknown_id_exits_1_and_cancels_the_others(url: str) -> None:
    pending = cli(url, "enqueue", "q", '{"x": 1}').stdout.strip()
    result = cli(url, "cancel", "q", "0-L99-0", pending)
    assert result.returncode == 1
    assert f"{pending}: cancelled" in result.stdout
    assert "0-L99-0: not_found" in result.stdout
    assert one_line_error(result) == "error: no message 0-L99-0 in queue q"
    malformed = cli(url, "cancel", "q", "bogus")
    assert malformed.returncode == 2
    assert "invalid message id 'bogus'" in one_line_error(malformed)


HANDLERS = textwrap.dedent(
    """
    import pathlib, time
    from s3queue import QueueError

    def gone(payload, ctx):
        raise QueueError("410 Gone", retriable=False)

    def slow(payload, ctx):
        out = pathlib.Path(payload["dir"])
        (out / f"started-{payload['n']}").write_text("")
        time.sleep(1.0)  # the job: long enough to be in flight at SIGTERM
        (out / f"done-{payload['n']}").write_text("")
    """
)


def test_dead_letters_can_be_listed_redriven_and_purged(url: str, tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    message_id = cli(url, "enqueue", "q", '{"x": 1}').stdout.strip()
    burst = cli(
        url, "worker", "q", "handlers:gone", "--burst", "--poll-interval", "0.05", cwd=tmp_path
    )
    assert burst.returncode == 0, burst.stderr
    listed = json.loads(cli(url, "dead", "q", "--json").stdout)
    assert [d["id"] for d in listed] == [message_id]
    assert listed[0]["errors"][0]["message"] == "410 Gone"
    redriven = cli(url, "redrive", "q")
    assert "redrove 1 messages" in redriven.stderr
    old, arrow, new = redriven.stdout.split()
    assert (old, arrow) == (message_id, "->")
    shown = json.loads(cli(url, "inspect", "q", message_id, "--json").stdout)
    assert shown["status"] == "redriven"
    assert shown["redriven_to"] == new
    stats = json.loads(cli(url, "stats", "q", "--json").stdout)
    assert stats["dead"] == 0
    assert stats["pending"] == 1
    refused = cli(url, "purge", "q")
    assert "--yes" in one_line_error(refused)
    assert cli(url, "purge", "q", "--yes").returncode == 0
    stats = json.loads(cli(url, "stats", "q", "--json").stdout)
    assert stats["pending"] == 0
    assert cli(url, "queues").stdout.split() == ["q"]


def test_delete_refuses_without_yes_then_removes_the_queue(url: str) -> None:
    cli(url, "enqueue", "q", '{"x": 1}')
    cli(url, "enqueue", "other", '{"x": 2}')
    refused = cli(url, "delete", "q")
    assert refused.returncode == 2
    assert "add --yes to confirm" in one_line_error(refused)
    assert cli(url, "queues").stdout.split() == ["other", "q"]
    deleted = cli(url, "delete", "q", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"queue": "q", "deleted": True}
    assert cli(url, "queues").stdout.split() == ["other"]
    assert cli(url, "stats", "q").returncode == 1


def test_redrive_of_an_id_that_is_not_dead_fails_and_redrives_nothing(
    url: str, tmp_path: Path
) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    letter = cli(url, "enqueue", "q", '{"x": 1}').stdout.strip()
    cli(url, "worker", "q", "handlers:gone", "--burst", "--poll-interval", "0.05", cwd=tmp_path)
    refused = cli(url, "redrive", "q", letter, "0-L999-0")
    assert refused.returncode == 1
    assert "0-L999-0 is not a dead letter" in one_line_error(refused)
    assert [d["id"] for d in json.loads(cli(url, "dead", "q", "--json").stdout)] == [letter]
    moved = json.loads(cli(url, "redrive", "q", letter, "--json").stdout)
    assert [m["id"] for m in moved] == [letter]
    assert moved[0]["redriven_to"] != letter


@pytest.mark.parametrize(
    "command",
    [
        ("stats",),
        ("inspect", "0-L0-0"),
        ("cancel", "0-L0-0"),
        ("dead",),
        ("redrive",),
        ("purge", "--yes"),
        ("delete", "--yes"),
    ],
)
def test_read_commands_on_a_missing_queue_fail_and_create_nothing(
    url: str, command: tuple[str, ...]
) -> None:
    cli(url, "create", "emails", "--shards", "2")
    cli(url, "create", "images")
    result = cli(url, command[0], "emials", *command[1:])
    assert result.returncode == 1
    assert "no queue named 'emials' at " in one_line_error(result)
    assert "(queues here: emails, images)" in result.stderr
    assert cli(url, "queues").stdout.split() == ["emails", "images"]


def test_create_makes_a_queue_once_with_its_shards(url: str) -> None:
    assert "created queue jobs with 3 shards" in cli(url, "create", "jobs", "--shards", "3").stdout
    again = cli(url, "create", "jobs", "--shards", "3")
    assert again.returncode == 0
    assert "already exists" in again.stdout
    assert "already exists with 3 shards" in one_line_error(
        cli(url, "create", "jobs", "--shards", "4")
    )
    stats = json.loads(cli(url, "stats", "jobs", "--json").stdout)
    assert len(stats["shards"]) == 3


def test_sigterm_lets_running_jobs_finish_and_exits_zero(url: str, tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    marks = tmp_path / "marks"
    marks.mkdir()
    for n in range(2):
        cli(url, "enqueue", "q", json.dumps({"dir": str(marks), "n": n}))
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s3queue",
            "--url",
            url,
            "worker",
            "q",
            "handlers:slow",
            "-c",
            "2",
            "--poll-interval",
            "0.05",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": pythonpath(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(marks.glob("started-*"))) < 2:
            assert time.monotonic() < deadline
            assert worker.poll() is None
            time.sleep(0.02)  # watching another process's files: no event to await
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    assert len(list(marks.glob("done-*"))) == 2
    stats = json.loads(cli(url, "stats", "q", "--json").stdout)
    assert stats["completed"] == 2
    assert stats["processing"] == 0


def test_worker_serves_metrics_and_health(url: str) -> None:
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "s3queue", "--url", url, "worker", "q", "json:loads"),
            *("--metrics-port", "0", "--poll-interval", "0.05"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        first = worker.stdout.readline()
        assert first.startswith("metrics on http://127.0.0.1:"), first
        base = first.split()[-1].removesuffix("/metrics")
        with urllib.request.urlopen(base + "/metrics", timeout=30) as answer:
            assert b"s3queue_jobs_claimed_total" in answer.read()
        worker.stdout.readline()  # "worker ... ready": the pool is about to run
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=30) as answer:
                    assert json.loads(answer.read())["healthy"] is True
                    break
            except urllib.error.HTTPError as error:  # 503 until the pool has started
                code = error.code
            assert code == 503
            assert time.monotonic() < deadline
            time.sleep(0.02)  # another process: no event to await
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()


def test_busy_metrics_port_is_one_line(url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(url, "worker", "q", "json:loads", "--metrics-port", str(port))
    assert "cannot serve metrics" in one_line_error(result)
    assert result.returncode == 2


def test_demo_runs_and_summarises(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "s3queue", "demo", "--jobs", "300", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout
    assert "dead" in result.stdout


def test_enqueue_and_stats_against_s3(s3_server: S3Server) -> None:
    url = s3_server.url(BUCKET, "cli")
    message_id = cli(url, "enqueue", "q", '{"x": 1}').stdout.strip()
    assert message_id
    stats = json.loads(cli(url, "stats", "q", "--json").stdout)
    assert stats["pending"] == 1


def test_create_leaves_an_existing_queue_as_it_is(url: str) -> None:
    first = cli(url, "create", "jobs", "--shards", "8", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"queue": "jobs", "created": True, "shards": 8}
    again = cli(url, "create", "jobs", "--json")  # no --shards: whatever it has is fine
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"queue": "jobs", "created": False, "shards": 8}
    other = cli(url, "create", "jobs", "--shards", "2")
    assert other.returncode == 2
    assert "already exists with 8 shards" in other.stderr


def test_worker_app_option_errors_are_one_line(url: str, tmp_path: Path) -> None:
    (tmp_path / "notapp.py").write_text("app = 42\n")
    assert "QUEUE and HANDLER" in one_line_error(cli(url, "worker"))
    assert "not an s3queue.App" in one_line_error(
        cli(url, "worker", "-A", "notapp:app", cwd=tmp_path)
    )
    both = cli(url, "worker", "q", "json:dumps", "-A", "notapp:app", cwd=tmp_path)
    assert "cannot be given with it" in one_line_error(both)
    assert "invalid app" in one_line_error(cli(url, "worker", "-A", "notapp"))
    assert "needs --app" in one_line_error(cli(url, "worker", "q", "json:dumps", "-Q", "a"))


def test_worker_app_burst_runs_every_task_of_the_listed_queues(url: str, tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(
        "import s3queue\n"
        "app = s3queue.App()\n"
        "@app.task(queue='a')\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
        "@app.task(queue='b')\n"
        "async def negate(x: int) -> int:\n"
        "    return -x\n"
    )
    script = (
        "import mytasks\n"
        "jobs = [mytasks.double.delay(4), mytasks.negate.delay(4)]\n"
        "print(' '.join(job.id for job in jobs))\n"
        "mytasks.app.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "S3QUEUE_URL": url}
    ids = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ids.returncode == 0, ids.stderr
    ran = cli(url, "worker", "-A", "mytasks:app", "--queues", "a,b", "--burst", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "worker " in ran.stdout
    assert "ready on a, b" in ran.stdout
    a_id, b_id = ids.stdout.split()
    assert json.loads(cli(url, "inspect", "a", a_id.split(":")[1], "--json").stdout)["result"] == 8
    assert json.loads(cli(url, "inspect", "b", b_id.split(":")[1], "--json").stdout)["result"] == -4


def test_enqueue_at_a_time_delays_it_until_then(url: str) -> None:
    at = time.time() + 3600
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))  # naive: read as UTC
    ran = cli(url, "enqueue", "q", "{}", "--at", stamp, "--json")
    assert ran.returncode == 0, ran.stderr
    info = json.loads(cli(url, "inspect", "q", json.loads(ran.stdout)["id"], "--json").stdout)
    assert info["status"] == "delayed"
    assert abs(info["visible_at"] - at) < 5
    assert "not a time" in one_line_error(cli(url, "enqueue", "q", "{}", "--at", "noon"))
    both = cli(url, "enqueue", "q", "{}", "--at", stamp, "--delay", "5")
    assert "both a delay and a time" in one_line_error(both)


def test_worker_rate_limit_holds_back_the_queue_and_bad_limits_are_one_line(
    url: str, tmp_path: Path
) -> None:
    assert "N/s" in one_line_error(cli(url, "worker", "q", "json:dumps", "--rate-limit", "fast"))
    assert cli(url, "create", "q", "--shards", "1").returncode == 0  # one bucket: the limit
    for n in range(3):
        assert cli(url, "enqueue", "q", json.dumps({"n": n}), "--rate-key", "k").returncode == 0
    (tmp_path / "quiet.py").write_text("def ok(payload, ctx):\n    return None\n")
    command = ["worker", "q", "quiet:ok", "--rate-limit", "1/h", "--poll-interval", "0.05"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "s3queue", "--url", url, "-q", *command],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": pythonpath(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while json.loads(cli(url, "stats", "q", "--json").stdout)["completed"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)  # watching another process: no event crosses the boundary
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    stats = json.loads(cli(url, "stats", "q", "--json").stdout)
    assert (stats["completed"], stats["pending"]) == (1, 2)  # the next token is an hour away
