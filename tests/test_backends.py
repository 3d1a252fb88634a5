"""Backend-specific behaviour: S3 errors and URLs, the local directory under many
processes, and crash safety of local writes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3queue.errors import (
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageUnavailable,
)
from s3queue.storage import RetryPolicy, UpdateVersion, open_storage
from s3queue.storage.local import LocalStorage
from tests.conftest import BUCKET
from tests.s3server import S3Server, free_port

# --- S3 -------------------------------------------------------------------------------


async def test_missing_bucket_is_not_found_with_a_fix(s3_server: S3Server) -> None:
    store = open_storage(s3_server.url("no-such-bucket", "p"))
    with pytest.raises(NotFound) as info:
        await store.get("x")
    assert "bucket" in str(info.value)
    assert info.value.suggestion


async def test_unreachable_endpoint_is_unavailable_after_retries() -> None:
    url = f"s3://b1b/p?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    store = open_storage(url, retry=RetryPolicy(attempts=2, initial=0.001))
    with pytest.raises(StorageUnavailable) as info:
        await store.get("x")
    assert store.counts.get == 2
    assert "\n" not in str(info.value)


async def test_wrong_credentials_are_an_auth_error(
    strict_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = open_storage(strict_s3.url(BUCKET, "p"))
    with pytest.raises(StorageAuthError) as info:
        await store.put("x", b"x")
    assert "AWS_ACCESS_KEY_ID" in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_credentials_are_one_line_from_the_cli(strict_s3: S3Server) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "s3queue", "--url", strict_s3.url(BUCKET, "p"), "stats", "q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: access denied")
    assert "AWS_ACCESS_KEY_ID" in line


def test_unknown_url_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'regoin'") as info:
        open_storage("s3://bucket/p?regoin=x")
    assert info.value.suggestion
    assert "region" in info.value.suggestion


def test_missing_bucket_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no bucket"):
        open_storage("s3:///prefix")


def test_credentials_in_the_url_are_not_shown() -> None:
    store = open_storage("s3://AKIDEXAMPLE:s3cr3t@bucket/p?region=us-east-1")
    assert "s3cr3t" not in store.url
    assert "AKIDEXAMPLE" not in store.url


async def test_s3_conditional_conflicts_are_counted(s3_server: S3Server) -> None:
    store = open_storage(s3_server.url(BUCKET, "counted"))
    etag = await store.put("k", b"1", mode="create")
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"2", mode="create")
    await store.put("k", b"2", mode=UpdateVersion(etag))
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"3", mode=UpdateVersion(etag))
    assert store.counts.precondition_failed == 2


# --- local directory ----------------------------------------------------------------------


def test_file_url_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "plain"
    target.write_text("x")
    with pytest.raises(ConfigurationError, match="is a file"):
        open_storage(f"file://{target}")


def test_empty_file_url_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="no directory"):
        open_storage("file://")


async def test_local_data_survives_a_new_instance(tmp_path: Path) -> None:
    first = open_storage(f"file://{tmp_path}")
    await first.put("a/b", b"kept")
    second = open_storage(f"file://{tmp_path}")
    got = await second.get("a/b")
    assert got is not None
    assert got.data == b"kept"


async def test_leftover_temp_files_are_invisible(tmp_path: Path) -> None:
    store = open_storage(f"file://{tmp_path}")
    await store.put("d/real", b"x")
    (tmp_path / "d" / ".tmp-real-abc123").write_bytes(b"half a wri")
    assert [e.key for e in await store.list("d/")] == ["d/real"]


def _cas_increment(root: str, rounds: int) -> None:
    async def run() -> None:
        store = LocalStorage.from_url(f"file://{root}")
        done = 0
        while done < rounds:
            current = await store.get("counter")
            assert current is not None
            try:
                await store.put(
                    "counter", str(int(current.data) + 1).encode(), mode=UpdateVersion(current.etag)
                )
                done += 1
            except PreconditionFailed:
                continue

    asyncio.run(run())


def test_four_processes_increment_a_counter_exactly(tmp_path: Path) -> None:
    asyncio.run(LocalStorage.from_url(f"file://{tmp_path}").put("counter", b"0"))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_cas_increment, args=(str(tmp_path), 50)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    final = asyncio.run(LocalStorage.from_url(f"file://{tmp_path}").get("counter"))
    assert final is not None
    assert final.data == b"200"


RACE = """
import asyncio, sys
from s3queue.errors import PreconditionFailed
from s3queue.storage import UpdateVersion
from s3queue.storage.local import LocalStorage
root, me, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
async def main():
    store = LocalStorage.from_url("file://" + root)
    for t in range(trials):
        # Wait for the round's starting gun (written by the test), then race.
        while (gun := await store.get(f"gun/{t}")) is None:
            await asyncio.sleep(0.001)
        base = gun.data.decode()  # every racer holds the same ETag
        results = []
        for kind in ("create", "cas"):
            try:
                if kind == "create":
                    await store.put(f"create/{t}", me.encode(), mode="create")
                else:
                    await store.put(f"cas/{t}", me.encode(), mode=UpdateVersion(base))
                results.append("win")
            except PreconditionFailed:
                results.append("lose")
        print(t, *results, flush=True)
asyncio.run(main())
"""


def test_processes_racing_create_and_cas_have_one_winner_each(tmp_path: Path) -> None:
    trials, racers = 20, 4
    store = LocalStorage.from_url(f"file://{tmp_path}")
    bases = [asyncio.run(store.put(f"cas/{t}", b"base")) for t in range(trials)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(tmp_path), f"p{i}", str(trials)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        for i in range(racers)
    ]
    try:
        for t in range(trials):
            asyncio.run(store.put(f"gun/{t}", bases[t].encode()))
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    rows = [line.split() for out in outputs for line in out.splitlines()]
    for t in range(trials):
        round_rows = [r for r in rows if r[0] == str(t)]
        assert len(round_rows) == racers
        assert sum(r[1] == "win" for r in round_rows) == 1
        assert sum(r[2] == "win" for r in round_rows) == 1
