"""A bare HTTP GET for tests of the servers in s3queue.webserver."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def get(port: int, path: str) -> tuple[int, Any]:
    """Status and body: parsed when the answer is JSON, text otherwise."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"application/json" in head:
        return status, json.loads(body)
    return status, body.decode()
