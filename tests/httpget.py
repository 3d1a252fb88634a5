"""A bare HTTP GET for tests of the servers in s3queue.ops.webserver.

Raw bytes on a socket rather than an HTTP client library, so that a test can send any
Host header, or none at all, exactly as it wants the server to see it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed when the answer is JSON, text otherwise


async def fetch(
    port: int, path: str, *, host: str | None = "127.0.0.1", method: str = "GET"
) -> Answer:
    """Send one request; ``host=None`` sends an HTTP/1.0 request with no Host header."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if host is None:
        writer.write(f"{method} {path} HTTP/1.0\r\n\r\n".encode())
    else:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    is_json = "application/json" in headers.get("content-type", "")
    return Answer(
        int(status_line.split()[1]), headers, json.loads(body) if is_json else body.decode()
    )


async def get(port: int, path: str) -> tuple[int, Any]:
    """Status and body of a GET sent as a browser on this machine would send it."""
    answer = await fetch(port, path, host=f"127.0.0.1:{port}")
    return answer.status, answer.body
