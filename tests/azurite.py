"""Azurite, Microsoft's Azure Storage emulator, on loopback: the Azure backend is
tested against its HTTP API, which honours If-None-Match (409) and If-Match (412)
as Azure does.

obstore cannot create containers, so :meth:`AzuriteServer.create_container` signs
that one request itself with the emulator's published development key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from s3queue.storage.azure import EMULATOR_ACCOUNT, EMULATOR_KEY
from tests.s3server import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
#: Where `make test` installs it (tools/azurite/package.json pins the version).
AZURITE = ROOT / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
_API_VERSION = "2021-08-06"


def azurite_executable() -> str:
    if AZURITE.exists():
        return str(AZURITE)
    found = shutil.which("azurite-blob")
    if found is None:
        raise RuntimeError(
            f"Azurite is not installed ({AZURITE} is missing); run `make test`, which "
            "installs it with npm"
        )
    return found


@dataclass
class AzuriteServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{EMULATOR_ACCOUNT}"

    def url(self, container: str, prefix: str) -> str:
        return f"az://{container}/{prefix}?emulator=true&endpoint={self.endpoint}"

    def create_container(self, name: str) -> None:
        """Create ``name`` (Azure's Create Container, signed with the shared key);
        an existing one is fine."""
        date = formatdate(usegmt=True)
        headers = f"x-ms-date:{date}\nx-ms-version:{_API_VERSION}\n"
        resource = f"/{EMULATOR_ACCOUNT}/{EMULATOR_ACCOUNT}/{name}\nrestype:container"
        # Shared Key's string to sign: the verb, eleven empty standard headers, then
        # the canonical x-ms headers and resource.
        signed = "PUT\n" + "\n" * 11 + headers + resource
        key = base64.b64decode(EMULATOR_KEY)
        signature = base64.b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest())
        request = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container",
            method="PUT",
            headers={
                "x-ms-date": date,
                "x-ms-version": _API_VERSION,
                "Authorization": f"SharedKey {EMULATOR_ACCOUNT}:{signature.decode()}",
                "Content-Length": "0",
            },
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as error:
            if error.code != 409:  # ContainerAlreadyExists
                raise

    def account_sas(self, permissions: str = "rwdlac") -> str:
        """An account SAS for the blob service, signed with the development key: what
        the portal's "Shared access signature" page hands out."""
        fields = {
            "sv": "2019-12-12",
            "ss": "b",
            "srt": "sco",
            "sp": permissions,
            "se": "2099-01-01T00:00:00Z",
            "spr": "https,http",
        }
        # Account SAS's string to sign: account, permissions, services, resource
        # types, start, expiry, IP, protocol, version, each on its own line.
        lines = [EMULATOR_ACCOUNT, permissions, "b", "sco", "", fields["se"], ""]
        signed = "\n".join([*lines, fields["spr"], fields["sv"], ""])
        key = base64.b64decode(EMULATOR_KEY)
        fields["sig"] = base64.b64encode(
            hmac.new(key, signed.encode(), hashlib.sha256).digest()
        ).decode()
        return urllib.parse.urlencode(fields)

    def stop(self) -> None:
        stop_process(self.process)


#: Attempts with a fresh port when the one chosen was taken before Azurite bound it.
STARTS = 3
#: What Azurite logs once it has bound its port: the proof that the server answering
#: there is this one, not another process (another test worker's server, say) that
#: took the port between choosing and binding.
_LISTENING = b"successfully listens on"


class PortTaken(RuntimeError):
    """Azurite exited because its port was taken in the meantime: worth a retry."""


def start_azurite(directory: Path) -> AzuriteServer:
    """Start Azurite's blob service on a free loopback port, storing under
    ``directory``, and wait until it listens."""
    error: PortTaken | None = None
    for attempt in range(STARTS):
        try:
            return _start(directory / f"run{attempt}")
        except PortTaken as taken:
            error = taken
    assert error is not None
    raise error


def _start(directory: Path) -> AzuriteServer:
    directory.mkdir(parents=True)
    port = free_port()
    log_path = directory / "azurite.log"
    process = subprocess.Popen(
        [
            azurite_executable(),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(directory),
            "--skipApiVersionCheck",
            # Without it Azurite tries to reach an outside telemetry host.
            "--disableTelemetry",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    # Its log, not an answer on the port: another server may answer there.
    while _LISTENING not in log_path.read_bytes():
        if process.poll() is not None:
            if b"EADDRINUSE" in log_path.read_bytes():
                raise PortTaken(f"port {port} was taken before Azurite bound it")
            raise RuntimeError(f"Azurite exited early; see {log_path}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Azurite did not listen within 60 s; see {log_path}")
        time.sleep(0.1)  # waiting for a child process to bind: no event to await
    return AzuriteServer(port, process)
