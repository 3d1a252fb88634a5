"""A small HTTP/1.1 server on asyncio, for the metrics endpoint and the dashboard.

Both serve a handful of GET routes to a scraper or a browser on the operator's
network; a few dozen lines on the worker's own event loop beat a web framework as a
dependency. One request per connection, no keep-alive, bounded request size. The
server hands each route the Host the client asked for, and deciding whether to
answer to that name is the app's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
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
    421: "Misdirected Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


#: Every answer declares its type, so a browser that guessed another could only be
#: tricked into running a JSON or text body as script or style.
NOSNIFF = {"X-Content-Type-Options": "nosniff"}

#: A Host header: a name or an IPv4 address, or an IPv6 address in brackets, then an
#: optional port. Browsers send nothing else; anything else is refused before routing.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    #: The authority the client asked for, as it sent it: the Host header, or the
    #: target's own authority when it sent an absolute URL; None when it named none.
    host: str | None = None


def host_name(host: str) -> str | None:
    """The name or address in a Host header, lower case, without port, brackets or a
    final dot (``Queue.Example.:443`` is ``queue.example``); None if it is malformed."""
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return None
    return match["v6"] or match["name"].removesuffix(".") or None


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


async def serve(
    app: App, host: str, port: int, *, headers: Mapping[str, str] = MappingProxyType({})
) -> asyncio.Server:
    """Answer GET and HEAD requests on ``host:port`` with ``app`` (port 0 picks a free
    port: ``server.sockets[0].getsockname()``). Close the server to stop. Every
    answer, the server's own refusals included, carries ``headers``."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in {**NOSNIFF, **headers}.items())

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, head_only = await _respond(app, reader)
            reason = REASONS.get(response.status, "Error")
            head = (
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n{extra}"
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


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[str]] | None:
    """The request line and the Host header values; None if the head is too large."""
    try:
        line = await reader.readline()
        hosts = []
        for _ in range(MAX_HEADERS + 1):  # the headers, then the blank line ending them
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "host":
                hosts.append(value.strip())
        else:
            return None
    except ValueError:  # a line over the limit
        return None
    return line.decode("latin-1"), hosts


async def _respond(app: App, reader: asyncio.StreamReader) -> tuple[Response, bool]:
    head = await _read_head(reader)
    if head is None:
        return Response.text(400, "request too large\n"), False
    line, hosts = head
    parts = line.split()
    # Two Host headers could be read differently by a proxy in front and by us.
    if len(parts) < 2 or len(hosts) > 1:
        return Response.text(400, "bad request\n"), False
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return Response.text(405, "only GET and HEAD\n"), False
    url = urlsplit(target)
    host: str | None
    if url.scheme:  # an absolute URL: its authority wins over Host (RFC 9112, 3.2.2)
        path, host = url.path, url.netloc
    else:  # a path, where "//name/..." is still a path, not an authority
        path, host = target.partition("?")[0], hosts[0] if hosts else None
    request = Request(method, unquote(path), dict(parse_qsl(url.query)), host)
    try:
        return await app(request), method == "HEAD"
    except Exception as error:  # one bad request must not take the server down
        log.exception("%s %s failed", method, target)
        return Response.text(500, f"{type(error).__name__}: {error}\n"), False
