"""A real S3-compatible HTTP server for the tests: moto's ``moto_server`` on loopback.

moto implements If-Match / If-None-Match on PUT, which is what the queue's
guarantees rest on, so the S3 backend is tested against HTTP, not against mocks;
``moto_atomic`` makes those conditional writes atomic, as S3's are.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as error:  # already there: fine
            if error.code != 409:
                raise

    def url(self, bucket: str, prefix: str) -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_until_answers(
    process: subprocess.Popen[bytes], answers: Callable[[], bool], name: str, log_path: Path
) -> None:
    """Return once ``answers()`` is true, polling while ``process`` (a test server)
    starts; raise naming its log if it exits or stays silent for 60 s."""
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early; see {log_path}")
        try:
            if answers():
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} did not answer within 60 s; see {log_path}")
        time.sleep(0.1)  # waiting for a child process to bind: no event to await


def start_s3_server(log_path: Path, extra_env: dict[str, str] | None = None) -> S3Server:
    """Start moto_server (with atomic conditional writes) on a free loopback port and
    wait until it answers."""
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    log = log_path.open("wb")
    script = Path(__file__).with_name("moto_atomic.py")
    process = subprocess.Popen(
        [sys.executable, str(script), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
        return True

    wait_until_answers(process, answers, "moto_server", log_path)
    return S3Server(endpoint, process)
