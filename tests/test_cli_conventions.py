"""The command line behaves as git, pip, celery and rq users expect: exit 0 on success,
1 when the operation fails, 2 on a usage or configuration error; one line per error
naming the option; -h and --version; global options after the command too; flags
shown as flags; every option described; logs on stderr, INFO by default for a worker;
--json on every command that prints data."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import s3queue
from s3queue import ConfigurationError, PayloadError, Queue, QueueNotFound, StorageUnavailable
from s3queue.ops import cli
from tests.conftest import BUCKET
from tests.s3server import S3Server

GLOBAL_OPTIONS = {"--url", "--log-level", "--log-format", "--quiet", "--debug"}
#: The commands whose output is data, and so take --json.
DATA_COMMANDS = {
    "enqueue",
    "create",
    "stats",
    "inspect",
    "cancel",
    "dead",
    "redrive",
    "purge",
    "delete",
    "doctor",
    "queues",
    "config",
    "sweep",
    "workers",
    "reshard",
}


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one line of a refusal, checked to be one line without a traceback or a
        parser's class name."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: "), lines[0]
        assert "Traceback" not in self.stderr
        for name in ("NoSuchOption", "BadParameter", "UsageError", "NoArgsIsHelpError"):
            assert name not in lines[0]
        return lines[0]


Run = Callable[..., Ran]


@pytest.fixture
def s3q(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    """``s3queue ARGS`` in this process, as ``main()`` runs it: exit code and output.
    Logging is put back afterwards (a command sets it up for itself)."""
    root, ours = logging.getLogger(), logging.getLogger("s3queue")
    saved = root.handlers[:], root.level, ours.level

    def run(*args: str) -> Ran:
        monkeypatch.setattr(sys, "argv", ["s3queue", *args])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        captured = capsys.readouterr()
        return Ran(int(exited.value.code or 0), captured.out, captured.err)

    yield run
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])


def subprocess_s3queue(*args: str, env: dict[str, str] | None = None) -> Ran:
    done = subprocess.run(
        [sys.executable, "-m", "s3queue", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


# --- help, version, completion ---------------------------------------------------------------


def test_version_prints_the_version_and_exits_0() -> None:
    ran = subprocess_s3queue("--version")
    assert (ran.code, ran.stdout, ran.stderr) == (0, f"s3queue {s3queue.__version__}\n", "")


@pytest.mark.parametrize("args", [("-h",), ("--help",), ("stats", "-h"), ("worker", "-h")])
def test_h_and_help_show_the_help_and_exit_0(s3q: Run, args: tuple[str, ...]) -> None:
    ran = s3q(*args)
    assert ran.code == 0, ran.stderr
    assert f"Usage: s3queue {' '.join(args[:-1])}".strip() in ran.stdout
    assert ran.stderr == ""


def test_help_names_the_program_s3queue_also_under_python_m() -> None:
    ran = subprocess_s3queue("stats", "-h")
    assert ran.code == 0
    assert "Usage: s3queue stats" in ran.stdout


def test_no_command_is_a_usage_error_the_help_on_stderr_exit_2(s3q: Run) -> None:
    # As click does (and rq, built on it): the help is what the user needs next, but
    # a script that forgot its command must not read it as success or as data.
    ran = s3q()
    assert ran.code == 2
    assert ran.stdout == ""
    assert "Usage: s3queue" in ran.stderr
    assert "Commands" in ran.stderr
    assert "Error" not in ran.stderr
    assert "NoArgsIsHelpError" not in ran.stderr


#: Typer finds the user's shell among the process's ancestors; under a test runner
#: started by make or CI that may be sh, or none. This makes it take the shell named.
NAMED_SHELL = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}


def test_completion_script_is_shown_for_bash() -> None:
    ran = subprocess_s3queue("--show-completion", "bash", env=NAMED_SHELL)
    assert ran.code == 0, ran.stderr
    assert "_S3QUEUE_COMPLETE=complete_bash" in ran.stdout
    assert "complete -o default -F _s3queue_completion s3queue" in ran.stdout


def test_completion_installs_into_the_users_shell_files(tmp_path: Path) -> None:
    ran = subprocess_s3queue(
        "--install-completion", "bash", env={"HOME": str(tmp_path), **NAMED_SHELL}
    )
    assert ran.code == 0, ran.stderr
    assert "bash completion installed" in ran.stdout
    assert "_s3queue_completion" in (tmp_path / ".bash_completions" / "s3queue.sh").read_text()
    assert ".bash_completions/s3queue.sh" in (tmp_path / ".bashrc").read_text()


def test_completion_completes_commands_and_choices() -> None:
    def complete(*words: str) -> list[str]:
        env = {
            "_S3QUEUE_COMPLETE": "complete_bash",
            "COMP_WORDS": " ".join(["s3queue", *words]),
            "COMP_CWORD": str(len(words)),
        }
        return subprocess_s3queue(env=env).stdout.split()

    assert complete("sta") == ["stats"]
    assert complete("stats", "q", "--log-level", "") == ["debug", "info", "warning", "error"]


# --- one line per error, and the exit codes -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--bogus",), "--bogus"),
        (("stats", "q", "--bogus"), "--bogus"),
        (("worker", "q", "json:loads", "--concurency", "2"), "--concurency"),
    ],
)
def test_an_unknown_option_is_one_line_naming_it_exit_2(
    s3q: Run, url: str, args: tuple[str, ...], named: str
) -> None:
    ran = s3q("--url", url, *args)
    assert ran.code == 2
    line = ran.error_line()
    assert named in line
    assert "--help" in line  # where to look


def test_a_value_given_to_a_flag_is_one_line_naming_it_exit_2(s3q: Run, url: str) -> None:
    ran = s3q("--url", url, "stats", "q", "--json=yes")
    assert ran.code == 2
    assert ran.error_line() == "error: Option '--json' does not take a value."


def test_a_bad_integer_is_one_line_naming_the_option_exit_2(s3q: Run, url: str) -> None:
    ran = s3q("--url", url, "enqueue", "q", "1", "--priority", "x")
    assert ran.code == 2
    line = ran.error_line()
    assert line.startswith("error: --priority='x' is not an integer (use an integer from ")
    assert "Input should be" not in line


def test_a_float_where_an_integer_belongs_is_refused_the_same_way(s3q: Run, url: str) -> None:
    ran = s3q("--url", url, "worker", "q", "json:loads", "-c", "2.5")
    assert ran.code == 2
    assert ran.error_line().startswith("error: --concurrency=2.5 is not an integer")


def test_a_bad_choice_is_one_line_listing_the_choices(s3q: Run, url: str) -> None:
    ran = s3q("--url", url, "stats", "q", "--log-level", "loud")
    assert ran.code == 2
    line = ran.error_line()
    assert "--log-level" in line
    assert "'debug', 'info', 'warning', 'error'" in line
    assert "Value error" not in line


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("stats",), "Missing argument 'queue'"),
        (("stat", "q"), "No such command 'stat'"),
        (("enqueue", "q"), "give a JSON payload or --file"),
        (("purge", "q"), "add --yes to confirm"),
        (("delete", "q"), "add --yes to confirm"),
        (("enqueue", "q", "{oops"), "invalid JSON payload"),
    ],
)
def test_usage_errors_exit_2(s3q: Run, url: str, args: tuple[str, ...], said: str) -> None:
    ran = s3q("--url", url, *args)
    assert ran.code == 2
    assert said in ran.error_line()


def test_a_failed_operation_exits_1(s3q: Run, url: str) -> None:
    missing = s3q("--url", url, "stats", "nowhere")
    assert missing.code == 1
    assert "no queue named 'nowhere'" in missing.error_line()
    s3q("--url", url, "create", "q")
    unknown = s3q("--url", url, "inspect", "q", "0-L9-0")
    assert unknown.code == 1
    assert "no message 0-L9-0" in unknown.stderr


def test_debug_shows_the_traceback_and_keeps_the_exit_code(s3q: Run, url: str) -> None:
    usage = s3q("--debug", "--url", url, "enqueue", "q", "1", "--priority", "x")
    assert usage.code == 2
    assert "Traceback" in usage.stderr
    failed = s3q("--url", url, "stats", "nowhere", "--debug")
    assert failed.code == 1
    assert "Traceback" in failed.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("bad URL"), 2),
        (PayloadError("too big"), 2),
        (QueueNotFound("no queue"), 1),
        (StorageUnavailable("503"), 1),
        (RuntimeError("a bug"), 1),
        (typer.BadParameter("not a number"), 2),
    ],
)
def test_the_exit_code_contract(error: BaseException, code: int) -> None:
    assert cli.exit_code(error) == code


# --- global options anywhere -------------------------------------------------------------------


def test_global_options_work_after_the_command(s3q: Run, url: str, tmp_path: Path) -> None:
    assert s3q("enqueue", "q", "1", "--url", url).code == 0
    after = s3q("stats", "q", "--url", url, "--json", "--log-level", "info", "-q")
    assert after.code == 0, after.stderr
    assert json.loads(after.stdout)["pending"] == 1
    # After the command wins over before it: the nearer one is what the user meant.
    elsewhere = f"file://{tmp_path / 'elsewhere'}"
    both = s3q("--url", elsewhere, "stats", "q", "--url", url, "--json")
    assert json.loads(both.stdout)["pending"] == 1


def test_the_store_url_comes_from_the_environment_when_not_given(
    s3q: Run, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3QUEUE_URL", url)
    assert s3q("enqueue", "q", "1").code == 0
    assert json.loads(s3q("stats", "q", "--json").stdout)["pending"] == 1


def test_every_command_takes_the_global_options() -> None:
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        names = {opt for param in command.params for opt in param.opts}
        assert names >= GLOBAL_OPTIONS, (name, GLOBAL_OPTIONS - names)


# --- the worker's logs --------------------------------------------------------------------------


def burst_worker(url: str, *more: str) -> Ran:
    """A worker that drains an empty queue and exits (its banner is all it logs)."""
    ran = subprocess_s3queue(
        "--url", url, "worker", "q", "json:loads", "--burst", "--poll-interval", "0.05", *more
    )
    assert ran.code == 0, ran.stderr
    assert "ready on q" in ran.stdout  # data and status on stdout; logs never
    return ran


def test_the_worker_logs_its_start_at_info_by_default_on_stderr(url: str) -> None:
    ran = burst_worker(url)
    assert " INFO s3queue.worker: worker " in ran.stderr
    assert "INFO" not in ran.stdout


def test_quiet_keeps_only_warnings(url: str) -> None:
    assert "INFO" not in burst_worker(url, "-q").stderr
    assert "INFO" not in burst_worker(url, "--quiet").stderr


def test_log_level_overrides_quiet(url: str) -> None:
    assert " INFO s3queue.worker: " in burst_worker(url, "-q", "--log-level", "info").stderr


def test_log_format_json_is_one_object_per_line(url: str) -> None:
    ran = burst_worker(url, "--log-format", "json")
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    assert any(line["logger"] == "s3queue.worker" and line["level"] == "INFO" for line in lines)


def test_other_commands_log_warnings_only_by_default(s3q: Run, url: str) -> None:
    logged = s3q("--url", url, "enqueue", "q", "1")
    assert logged.code == 0
    assert logged.stderr == ""
    assert logging.getLogger("s3queue").getEffectiveLevel() == logging.WARNING


# --- --json on every command that prints data --------------------------------------------------


def dead_letter(url: str, queue: str) -> str:
    """Enqueue a message to ``queue`` and fail it for good; its id."""

    async def make() -> str:
        async with await Queue.open(url, queue) as q:
            message_id = await q.enqueue({"to": "ada"})
            [lease] = await q.claim(1)
            await q.fail(lease, "410 Gone", retriable=False)
            return message_id

    return asyncio.run(make())


def as_json(s3q: Run, url: str, *args: str) -> Any:
    ran = s3q("--url", url, *args, "--json")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.count("\n") == 1, ran.stdout  # one line
    return json.loads(ran.stdout)


@pytest.mark.timeout(120)
def test_every_data_command_prints_json(
    s3q: Run, store_url: str, tmp_path: Path, backend: str
) -> None:
    url = store_url
    assert as_json(s3q, url, "create", "q", "--shards", "2") == {
        "queue": "q",
        "created": True,
        "shards": 2,
    }
    assert as_json(s3q, url, "create", "q", "--shards", "2")["created"] is False
    message_id = as_json(s3q, url, "enqueue", "q", '{"n": 1}')["id"]
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"n": 2}\n{"n": 3}\n')
    many = as_json(s3q, url, "enqueue", "q", "-f", str(lines))
    assert many["enqueued"] == 2
    assert len(set(many["ids"])) == 2
    assert as_json(s3q, url, "inspect", "q", message_id)["payload"] == {"n": 1}
    [cancelled] = as_json(s3q, url, "cancel", "q", many["ids"][0])
    assert (cancelled["id"], cancelled["status"]) == (many["ids"][0], "cancelled")
    stats = as_json(s3q, url, "stats", "q")
    assert (stats["pending"], stats["cancelled"], len(stats["shards"])) == (2, 1, 2)
    assert stats["problems"] == []
    assert as_json(s3q, url, "queues") == [{"name": "q"}]
    letter = dead_letter(url, "d")
    [dead] = as_json(s3q, url, "dead", "d")
    assert (dead["id"], dead["status"], dead["errors"][0]["message"]) == (
        letter,
        "dead",
        "410 Gone",
    )
    [moved] = as_json(s3q, url, "redrive", "d")
    assert moved["id"] == letter
    assert as_json(s3q, url, "inspect", "d", moved["redriven_to"])["status"] == "pending"
    assert as_json(s3q, url, "doctor", "q") == {"problems": [], "fixed": []}
    assert as_json(s3q, url, "purge", "q", "--yes") == {"queue": "q", "purged": True}
    assert as_json(s3q, url, "stats", "q")["pending"] == 0


def test_json_against_s3_as_a_user_runs_it(s3_server: S3Server) -> None:
    url = s3_server.url(BUCKET, "cli-json")
    enqueued = subprocess_s3queue("enqueue", "q", "1", "--url", url, "--json")
    assert enqueued.code == 0, enqueued.stderr
    message_id = json.loads(enqueued.stdout)["id"]
    shown = json.loads(
        subprocess_s3queue("inspect", "q", message_id, "--url", url, "--json").stdout
    )
    assert shown["status"] == "pending"
    listed = json.loads(subprocess_s3queue("--url", url, "queues", "--json").stdout)
    assert {"name": "q"} in listed


def test_the_data_commands_are_the_ones_with_json() -> None:
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    with_json = {
        name
        for name, command in group.commands.items()
        if any("--json" in param.opts for param in command.params)
    }
    assert with_json == DATA_COMMANDS


# --- the help itself ---------------------------------------------------------------------------


def every_command() -> list[tuple[str, Any]]:
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    return [("", group), *sorted(group.commands.items())]


COMMAND_IDS = [name or "s3queue" for name, _ in every_command()]


@pytest.mark.parametrize(("name", "command"), every_command(), ids=COMMAND_IDS)
def test_every_option_and_argument_is_described(name: str, command: Any) -> None:
    context = typer.Context(command, info_name="s3queue")
    for param in command.get_params(context):
        if getattr(param, "hidden", False):
            continue
        assert (param.help or "").strip(), f"s3queue {name} {param.opts[0]} has no help"


@pytest.mark.parametrize(("name", "command"), every_command(), ids=COMMAND_IDS)
def test_flags_are_shown_as_flags(name: str, command: Any) -> None:
    args = [name, "--help"] if name else ["--help"]
    shown = CliRunner().invoke(cli.app, args, terminal_width=200, prog_name="s3queue")
    assert shown.exit_code == 0, shown.output
    assert "<bool>" not in shown.output
    assert "--no-" not in shown.output  # a switch is on when given, off when not
    if name in DATA_COMMANDS:
        assert "--json " in shown.output


def test_every_json_schema_is_documented() -> None:
    documented = (Path(__file__).parent.parent / "docs" / "CLI.md").read_text()
    for name in DATA_COMMANDS:
        assert f"### `{name}`" in documented, name
