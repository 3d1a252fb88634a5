"""A small HTTP/1.1 server on asyncio, for the metrics endpoint and the dashboard.

Both serve a handful of GET routes to a scraper or a browser on the operator's
network; a few dozen lines on the worker's own event loop beat a web framework as a
dependency. One request per connection, no keep-alive, bounded request size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger("s3queue.webserver")

#: Requests with a longer line, or more header lines, are refused.
MAX_LINE = 8192
MAX_HEADERS = 100

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, "text/plain; charset=utf-8", text.encode())

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, "application/json", json.dumps(value, indent=2).encode() + b"\n")


App = Callable[[Request], Awaitable[Response]]


async def serve(app: App, host: str, port: int) -> asyncio.Server:
    """Answer GET and HEAD requests on ``host:port`` with ``app`` (port 0 picks a free
    port: ``server.sockets[0].getsockname()``). Close the server to stop."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, head_only = await _respond(app, reader)
            reason = REASONS.get(response.status, "Error")
            head = (
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if head_only else response.body))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent garbage: nobody to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port, limit=MAX_LINE)


async def _respond(app: App, reader: asyncio.StreamReader) -> tuple[Response, bool]:
    try:
        line = await reader.readline()
        for _ in range(MAX_HEADERS):
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
    except ValueError:  # a line over the limit
        return Response.text(400, "request too large\n"), False
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return Response.text(400, "bad request\n"), False
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return Response.text(405, "only GET and HEAD\n"), False
    url = urlsplit(target)
    request = Request(method, unquote(url.path), dict(parse_qsl(url.query)))
    try:
        return await app(request), method == "HEAD"
    except Exception as error:  # one bad request must not take the server down
        log.exception("%s %s failed", method, target)
        return Response.text(500, f"{type(error).__name__}: {error}\n"), False
