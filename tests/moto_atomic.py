"""moto_server with S3's atomic conditional writes; run as a script with moto_server's
arguments.

moto checks If-Match / If-None-Match and then stores the object as two steps, and its
server answers each request on its own thread, so two conditional PUTs of one key can
both pass the check: CI once saw two winners of a create-if-absent race. S3 decides
each conditional write atomically and the queue's guarantees rest on that, so this
server holds one lock around every S3 request that changes something. Reads (GET,
HEAD, LIST) stay concurrent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from moto import server
from moto.s3.responses import S3Response

_WRITING = threading.RLock()
_READS = frozenset({"GET", "HEAD"})

Respond = Callable[[Any, Any, str, Any], Any]


def _one_write_at_a_time(respond: Respond) -> Respond:
    def serialised(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        if request.method in _READS:
            return respond(self, request, full_url, headers)
        with _WRITING:
            return respond(self, request, full_url, headers)

    return serialised


# The dispatchers look these up on the class for every request.
for name in ("key_response", "bucket_response"):
    setattr(S3Response, name, _one_write_at_a_time(getattr(S3Response, name)))

if __name__ == "__main__":
    server.main()
