"""A read-only web dashboard over every queue under a storage URL.

Everything it shows is read from storage (the queues' cursors, logs and dead
letters), so it knows the whole history the bucket keeps, whoever wrote it, and
loses nothing when it restarts. It changes nothing: redrive and purge stay on the
command line, where they need no authentication story.

Routes: ``/`` (the page, with ``/dashboard.js`` and ``/dashboard.css``),
``/api/queues`` (every queue's counts, cached for ``refresh`` seconds so that many
browser tabs cost one read), and per queue ``/api/queues/<name>/dead``,
``/api/queues/<name>/workers`` (heartbeats and the coordinator) and
``/api/queues/<name>/messages/<id>``.

It answers only requests addressed to a name it was told is its own (see
:class:`AllowedHosts`), and every answer forbids framing, sniffing and inline code.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from s3queue import limits, sources
from s3queue.core.catalog import list_queues
from s3queue.errors import ConfigurationError, QueueError
from s3queue.ops import webserver, workers_view
from s3queue.ops.webserver import Request, Response
from s3queue.queue import Queue
from s3queue.storage import Storage

MAX_DEAD = 500
#: Workers shown in full (their heartbeats read); the rest by their listing only.
WORKER_DETAILS = 50
#: Seconds between two reads of a queue's workers, at least.
WORKERS_REFRESH = 15.0

#: Sent with every answer. The page runs only the files the dashboard serves, so markup
#: that slipped into a queue name or an error message could not run script; no other
#: site may frame it (clickjacking); and it tells no site it links to where it was.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Referrer-Policy": "no-referrer",
}

#: The page and the files it loads, by path: script and style are files of their own
#: because the policy above refuses inline ones.
FILES = {
    "": ("dashboard.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


@dataclass(frozen=True)
class AllowedHosts:
    """The host names the dashboard answers to: a guard against DNS rebinding.

    A page on evil.example can make its own name resolve to 127.0.0.1, or to any
    address on the user's network, after the page has loaded. Its script then reads
    this dashboard as if it were evil.example, which the browser allows, since that is
    the page's own origin. Only the Host header gives it away, so a name that is not
    on this list is refused.
    """

    names: frozenset[str]

    @classmethod
    def for_bind(cls, bind: str, allowed: Iterable[str] = ()) -> AllowedHosts:
        """The names to answer to when listening on ``bind``: each ``allowed`` name,
        ``bind`` itself when it is a name, and localhost when loopback is among the
        addresses listened on. Listening on every interface (``0.0.0.0``, ``::``)
        therefore serves localhost, any address, and the ``allowed`` names, but no other
        name: the names that lead here (the host name, DNS aliases, a Kubernetes
        service) cannot be known from inside, and answering to any name at all would
        answer to the rebound one too."""
        names = set()
        for name in allowed:
            bare = webserver.host_name(name)
            if bare is None or ":" in name:
                raise ConfigurationError(
                    f"allowed host {name!r}",
                    suggestion="give a bare name such as queue.example.com, without scheme or port",
                )
            names.add(bare)
        try:
            address = ipaddress.ip_address(bind)
        except ValueError:  # a name, or "" for every interface
            loopback = bind in ("", "localhost")
            named = webserver.host_name(bind)
            if named is not None:
                names.add(named)
        else:
            loopback = address.is_loopback or address.is_unspecified
        if loopback:
            names.add("localhost")
        return cls(frozenset(names))

    def refusal(self, host: str | None) -> Response | None:
        """None to answer a request for ``host`` (a Host header); otherwise the answer
        that refuses it, naming the fix."""
        if host is None:
            return Response.text(400, "refused: no Host header (HTTP/1.1 requires one)\n")
        name = webserver.host_name(host)
        if name is None:
            return Response.text(400, f"refused: malformed Host {host!r}\n")
        if name in self.names or _is_address(name):
            return None
        return Response.text(
            421,
            f"refused: this dashboard does not answer to Host {host!r}, a guard against "
            f"DNS rebinding; if that name is this machine's, add --allowed-host {name}\n",
        )


def _is_address(name: str) -> bool:
    """Whether a Host names an IP address, which no one can rebind.

    Rebinding needs a name whose DNS answer the attacker changes, so that the
    attacker's page and this dashboard end up with one origin. A page whose origin is
    an address was loaded from that address, with no DNS on the way: from this
    dashboard, so it is our own page, or from elsewhere, so it is another origin and
    the browser keeps our answers from its script (we send no CORS headers). Browsers
    write every form of an IPv4 address (0x7f.1, 2130706433) in dotted decimal."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Dashboard:
    def __init__(
        self, storage: Storage, *, refresh: float = 5.0, allowed_hosts: Iterable[str] = ()
    ) -> None:
        """``allowed_hosts``: the names, besides the address :meth:`serve` listens on,
        that browsers reach the dashboard by, e.g. a DNS alias or a proxy's name."""
        self.storage = storage
        self.refresh = limits.REFRESH.check(refresh, "refresh")
        self.allowed_hosts = tuple(allowed_hosts)
        self.hosts = AllowedHosts.for_bind("127.0.0.1", self.allowed_hosts)
        self._queues: dict[str, Queue] = {}
        self._overview: dict[str, Any] | None = None
        self._fetched = 0.0
        self._previous: tuple[float, dict[str, int]] | None = None
        self._workers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    async def serve(self, host: str = "127.0.0.1", port: int = 8321) -> asyncio.Server:
        port = limits.PORT.check(port, "port")
        self.hosts = AllowedHosts.for_bind(host, self.allowed_hosts)
        return await webserver.serve(self.answer, host, port, headers=HEADERS)

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()
        self._queues.clear()

    # --- routes ---------------------------------------------------------------------------------

    async def answer(self, request: Request) -> Response:
        refusal = self.hosts.refusal(request.host)
        if refusal is not None:
            return refusal
        parts = [p for p in request.path.split("/") if p]
        if len(parts) <= 1 and "".join(parts) in FILES:
            name, content_type = FILES["".join(parts)]
            return Response(
                200, content_type, resources.files("s3queue.ops").joinpath(name).read_bytes()
            )
        if parts == ["api", "queues"]:
            return Response.json(await self.overview())
        if len(parts) >= 4 and parts[:2] == ["api", "queues"]:
            queue = await self._queue(parts[2])
            if queue is None:
                return Response.json(
                    {
                        "error": f"no queue named {parts[2]!r} under {self.storage.url}",
                        "fix": "pick a name that /api/queues lists",
                    },
                    404,
                )
            if parts[3:] == ["workers"]:
                return Response.json(await self.workers(queue))
            if parts[3:] == ["dead"]:
                return await self._dead(queue, request.query.get("limit", "50"))
            if parts[3] == "messages" and len(parts) == 5:
                return await self._message(queue, parts[4])
        return Response.json({"error": f"nothing at {request.path}", "fix": "see /"}, 404)

    async def overview(self) -> dict[str, Any]:
        """Every queue's counts, read at most once per ``refresh`` seconds."""
        async with self._lock:
            if self._overview is None or sources.monotonic() - self._fetched >= self.refresh:
                self._overview = await self._read_overview()
                self._fetched = sources.monotonic()
            return self._overview

    async def workers(self, queue: Queue) -> dict[str, Any]:
        """``queue``'s workers and coordinator (see :mod:`workers_view`), read at most
        once per max(``refresh``, WORKERS_REFRESH) seconds: heartbeats change once
        an interval, and each read is a LIST and a GET per worker shown in full."""
        async with self._lock:
            fetched, seen = self._workers.get(queue.name, (0.0, None))
            if seen is None or sources.monotonic() - fetched >= max(self.refresh, WORKERS_REFRESH):
                seen = await workers_view.read(
                    queue.storage, queue.name, queue.clock(), details=WORKER_DETAILS
                )
                self._workers[queue.name] = (sources.monotonic(), seen)
            return seen

    async def _read_overview(self) -> dict[str, Any]:
        names = await list_queues(self.storage)
        queues = [await self._open(name) for name in names]
        stats = await asyncio.gather(*(q.stats() for q in queues))
        now = sources.wall()
        completed = {q.name: s.completed for q, s in zip(queues, stats, strict=True)}
        rates: dict[str, float | None] = dict.fromkeys(completed)
        if self._previous is not None:
            then, before = self._previous
            for name, count in completed.items():
                if name in before and now > then:
                    rates[name] = max(0.0, (count - before[name]) / (now - then))
        self._previous = (now, completed)
        return {
            "url": self.storage.url,
            "fetched_at": now,
            "refresh": self.refresh,
            "storage_requests": self.storage.counts.snapshot(),
            "queues": [
                {"name": q.name, "completed_per_s": rates[q.name], **s.to_json()}
                for q, s in zip(queues, stats, strict=True)
            ],
        }

    async def _dead(self, queue: Queue, limit_text: str) -> Response:
        try:
            limit = int(limit_text)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_DEAD:
            return Response.json(
                {"error": f"limit={limit_text}", "fix": f"use 1 to {MAX_DEAD}"}, 400
            )
        letters = await queue.dead_letters(limit)
        return Response.json({"queue": queue.name, "dead": [m.to_json() for m in letters]})

    async def _message(self, queue: Queue, message_id: str) -> Response:
        try:
            info = await queue.get(message_id)
        except QueueError as error:  # a malformed id
            return Response.json({"error": error.message, "fix": error.suggestion}, 400)
        if info is None:
            return Response.json(
                {"error": f"no message {message_id} in queue {queue.name!r}", "fix": None}, 404
            )
        return Response.json(info.to_json())

    async def _queue(self, name: str) -> Queue | None:
        """The queue called ``name``; None if there is no such queue (opening an
        unknown name would create it, and a dashboard must not create queues)."""
        if name not in self._queues and name not in await list_queues(self.storage):
            return None
        return await self._open(name)

    async def _open(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = await Queue.open(self.storage, name, verify_store=False, create=False)
            self._queues[name] = queue
        return queue
