"""The README's code runs as written: every Python block is a tested example (the
file itself, or an excerpt of one, line for line), and the install block's commands
are the ones `make` runs or run here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUCKET
from tests.s3server import S3Server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)


def section(heading: str) -> str:
    start = README.index(heading)
    following = re.search(r"^#{1,3} ", README[start + len(heading) :], flags=re.M)
    return README[start : start + len(heading) + (following.start() if following else 0)]


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def is_excerpt(block: str, source: str) -> bool:
    """Whether every line of ``block`` appears in ``source``, in order."""
    remaining = iter(lines(source))
    return all(any(line == other for other in remaining) for line in lines(block))


@pytest.mark.parametrize("number", range(len(blocks("python"))))
def test_each_python_block_is_an_example_that_runs(number: int) -> None:
    block = blocks("python")[number]
    sources = [path for path in EXAMPLES if is_excerpt(block, path.read_text())]
    assert sources, f"README python block {number + 1} is in no file of examples/:\n{block}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_runs(example: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "an example shows what it did"
    if example.name == "quickstart.py":
        finished = [line for line in result.stdout.splitlines() if ": completed after" in line]
        assert len(finished) == 3  # the dedup key folded two enqueues into one message
        assert "completed after 2 attempt(s)" in result.stdout  # the flaky one was retried


def make_commands() -> list[str]:
    """The Makefile's install commands as a user would type them in an active venv."""
    text = (ROOT / "Makefile").read_text()
    values = dict(re.findall(r"^(\w+) \??:?= (.+)$", text, flags=re.M))
    commands = []
    for line in re.findall(r"^\t(.+)$", text, flags=re.M):
        while "$(" in line and any(f"$({name})" in line for name in values):
            for name, value in values.items():
                line = line.replace(f"$({name})", value)
        line = line.split("|| ")[-1].replace(".venv/bin/python -m pip", "pip")
        commands.append(line.replace(" --quiet", ""))
    return commands


def test_the_install_block_is_what_make_runs_and_the_rest_runs(tmp_path: Path) -> None:
    [install] = re.findall(r"^```sh\n(.*?)^```", section("## Install"), flags=re.M | re.S)
    made = make_commands()
    bin_dir = Path(sys.executable).parent
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in lines(install):
        if command.startswith(("python3 -m venv", "pip install")):
            # What `make install` runs on every fresh clone (.ci/run): the same
            # commands, the activation aside.
            for step in command.split(" && "):
                assert step in made or step == ". .venv/bin/activate", (step, made)
            continue
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"


def command_line_block() -> list[str]:
    [block] = re.findall(r"^```sh\n(.*?)^```", section("### Command line"), flags=re.M | re.S)
    return [line for line in lines(block) if not line.startswith("#")]


def run_block(commands: list[str], cwd: Path, replace: tuple[str, str] | None = None) -> None:
    """Run the block's lines in one shell, each checked for its exit code, and the
    output of each ``--json`` command parsed."""
    (cwd / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("S3QUEUE_URL", None)
    exports: list[str] = []
    for command in commands:
        if replace is not None:
            command = command.replace(*replace)
        if command.startswith("export "):
            exports.append(command.split("#")[0])
            continue
        script = "; ".join([*exports, command])
        done = subprocess.run(
            ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        if "--json" in command:
            for line in done.stdout.splitlines():
                json.loads(line)  # every line of --json output is a JSON document


def test_the_command_line_block_runs_on_a_local_store(tmp_path: Path) -> None:
    commands = command_line_block()
    assert commands[0].startswith("export S3QUEUE_URL='file://.s3queue'")
    run_block(commands, tmp_path)


def test_the_command_line_block_runs_on_s3(tmp_path: Path, s3_server: S3Server) -> None:
    url = s3_server.url(BUCKET, f"readme-{tmp_path.name}")
    run_block(command_line_block(), tmp_path, replace=("file://.s3queue", url))
