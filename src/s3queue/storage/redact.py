"""Store URLs made safe to print: ``s3://KEY:SECRET@bucket/prefix`` shows as
``s3://KEY:***@bucket/prefix``.

Every message, error, hint, log line and repr that can show a store URL shows it
through :func:`redact_url`, and text that may quote a URL typed by the user (the
command line's parser, a traceback) goes through :func:`redact`. The access key id
stays: it names which credentials were used, which is what an operator debugging
"access denied" needs, and it is not a secret (AWS prints it in its own errors).

Invariant: redaction errs towards hiding too much. A secret with an unencoded
``/``, ``?``, ``#`` or ``@`` is hidden whole, even if the bucket or prefix is
hidden with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
#: Shorter "secrets" are not replaced in free text: masking every "ab" in a
#: traceback would hide the message and protect nothing.
MIN_SECRET = 4

#: Query options whose value is a credential. None is accepted today; a mistyped or
#: future one must still not be printed, nor an Azure SAS pasted into the query
#: (its signature is ``sig=``).
_SECRET_OPTION = re.compile(
    r"(?P<name>[?&][^=&#\s'\"]*(?:secret|password|passwd|token|sig|credential|"
    r"private|key|sas)[^=&#\s'\"]*=)(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE,
)
#: Azure's secrets wherever they stand, as a connection string or a SAS writes them,
#: plain or percent-encoded: a connection string or SAS pasted as the value of an
#: option (``?cs=...;AccountKey=...``), into the account or into the endpoint.
_AZURE_SECRET = re.compile(
    r"(?P<name>(?<![A-Za-z])(?:AccountKey|SharedAccessSignature|sig)(?:=|%3D))"
    r"(?P<value>(?:(?!%26|%3B)[^;&#\s'\"])*)",
    re.IGNORECASE,
)
#: A run of text that may hold a URL with a userinfo.
_TOKEN = re.compile(r"\S*@\S*")


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(before, secret, after)`` when ``url`` holds ``KEY:SECRET@``, else None.

    The userinfo ends at the last '@', not at the first '/' or '?' as a parser
    would have it, so that a secret with unencoded reserved characters is still
    found whole.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or "@" in scheme:  # no scheme: that "://" is in the query
        scheme, separator, rest = "", "", url
    at = rest.rfind("@")
    key, colon, secret = rest[:at].partition(":")
    if at < 0 or not colon:
        return None
    return f"{scheme}{separator}{key}:", secret, rest[at:]


def redact_url(url: str) -> str:
    """``url`` with its secret (the password of the userinfo, and the value of any
    secret-named query option) replaced by ``***``."""
    found = _userinfo(url)
    if found is not None:
        url = f"{found[0]}{MASK}{found[2]}"
    url = _SECRET_OPTION.sub(lambda match: f"{match['name']}{MASK}", url)
    return _AZURE_SECRET.sub(lambda match: f"{match['name']}{MASK}", url)


def url_secrets(url: str) -> list[str]:
    """The secrets ``url`` holds, as written and percent-decoded: what to scrub from
    text that might echo them outside the URL (a third party's error message)."""
    found = _userinfo(url)
    values = [found[1]] if found is not None else []
    values += [match["value"] for match in _SECRET_OPTION.finditer(url)]
    values += [match["value"] for match in _AZURE_SECRET.finditer(url)]
    return [text for value in values for text in {value, unquote(value)}]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it redacted, and every one of ``secrets`` (see
    :func:`url_secrets`) replaced by ``***`` wherever it appears."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    text = _TOKEN.sub(lambda match: redact_url(match[0]), text)
    text = _SECRET_OPTION.sub(lambda match: f"{match['name']}{MASK}", text)
    return _AZURE_SECRET.sub(lambda match: f"{match['name']}{MASK}", text)
