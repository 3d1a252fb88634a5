"""Azure Blob Storage: ``az://container/prefix?account=NAME`` (also ``azure://``).

Credentials come from where Azure users already keep them, never from the URL:
``AZURE_STORAGE_CONNECTION_STRING`` (parsed here: obstore does not read it), or the
variables obstore reads itself (``AZURE_STORAGE_ACCOUNT_NAME`` with
``AZURE_STORAGE_ACCOUNT_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``, a service principal's
``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET``/``AZURE_TENANT_ID``, workload identity,
and managed identity when nothing else is set). The query names the account, an
endpoint (Azurite, sovereign clouds) or the local emulator.

Azure's own traps are handled in ``storage.cloud``: its list answers unquoted ETags
(only quoted ones are handed out), deleting a missing blob is a 404 (not an error
here), a blob batch takes 256 keys, and a LIST page holds 5,000.
"""

from __future__ import annotations

import os
import re
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

from obstore.store import AzureStore

from s3queue.errors import ConfigurationError
from s3queue.storage.cloud import (
    CloudStorage,
    Dialect,
    allows_http,
    check_endpoint,
    flag,
    host_of,
    query_options,
)
from s3queue.storage.redact import redact_url

QUERY_OPTIONS = ("account", "endpoint", "emulator", "allow_http")
CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
#: Container names: 3-63 lowercase letters, digits and single hyphens, starting and
#: ending with a letter or digit.
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9\-]{1,61}[a-z0-9]$")
#: Storage account names: 3-24 lowercase letters and digits.
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
#: Azurite's well-known development account and key, published in Azure's
#: documentation: they open nothing but a local emulator.
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
EMULATOR_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
_CREDENTIALS = (
    f"check {CONNECTION_STRING}, or AZURE_STORAGE_ACCOUNT_NAME with "
    "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or the identity's role on "
    "the container (Storage Blob Data Contributor)"
)
_OPEN_HINT = f"name the account (?account=NAME or AZURE_STORAGE_ACCOUNT_NAME); {_CREDENTIALS}"
DIALECT = Dialect(
    container="container",
    delete_batch=256,
    list_page=5000,
    missing=("ContainerNotFound",),
    missing_reasons=("The specified container does not exist.",),
    credentials=_CREDENTIALS,
)


class AzureStorage(CloudStorage):
    """``az://container/prefix?account=...``; keys are relative to the prefix."""

    dialect = DIALECT
    kind = "Azure"
    scheme = "az"
    store_type = AzureStore

    @classmethod
    def from_url(cls, url: str) -> AzureStorage:
        shown = redact_url(url)
        parts = urlsplit(url)
        container = _container_of(parts, shown)
        options = query_options(
            parts,
            QUERY_OPTIONS,
            shown,
            f"; credentials go in {CONNECTION_STRING} or the AZURE_STORAGE_* variables",
        )
        # The URL's options win over the connection string, whose credential is
        # forced (credential_type) so that no other AZURE_* variable replaces it;
        # given neither, obstore reads the AZURE_* variables itself.
        config = {
            **connection_string_config(os.environ.get(CONNECTION_STRING, "")),
            **_options(options, shown),
        }
        endpoint = str(config.get("endpoint", ""))
        if endpoint:
            # obstore's use_emulator (AZURE_STORAGE_USE_EMULATOR) would replace it.
            config["use_emulator"] = False
        allow_http = allows_http(endpoint, options, shown)
        account = config.get("account_name") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
        suggestion = (
            f"name the account (?account=NAME or AZURE_STORAGE_ACCOUNT_NAME); {_CREDENTIALS}"
        )
        where = endpoint or f"az://{account}/{container}"
        return cls._open(url, container, config, allow_http, suggestion, where)


def _container_of(parts: SplitResult, shown: str) -> str:
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: an Azure URL takes no credentials",
            suggestion=f"set {CONNECTION_STRING}, or AZURE_STORAGE_ACCOUNT_NAME and "
            "AZURE_STORAGE_ACCOUNT_KEY, and name the account with ?account=NAME",
        )
    container = host_of(parts)
    if not container:
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: no container name",
            suggestion="use az://container/prefix?account=NAME",
        )
    if not _CONTAINER.match(container):
        raise ConfigurationError(
            f"invalid container name {container!r} in {shown!r}",
            suggestion="container names are 3 to 63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit",
        )
    return container


def _options(options: dict[str, str], shown: str) -> dict[str, Any]:
    """obstore's Azure configuration from the URL's query."""
    config: dict[str, Any] = {}
    if flag("emulator", options.get("emulator", "false"), shown):
        config.update(emulator_config())
    if "account" in options:
        if not _ACCOUNT.match(options["account"]):
            raise ConfigurationError(
                f"invalid account name {redact_url(options['account'])!r} in {shown!r}",
                suggestion="account names are 3 to 24 lowercase letters and digits; "
                f"credentials go in {CONNECTION_STRING} or the AZURE_STORAGE_* variables",
            )
        config["account_name"] = options["account"]
    if "endpoint" in options:
        check_endpoint(options["endpoint"], shown)
        config["endpoint"] = options["endpoint"].rstrip("/")
    return config


def emulator_config() -> dict[str, Any]:
    """Azurite's development account, at ``AZURITE_BLOB_STORAGE_URL`` or Azurite's
    default address. Given explicitly: obstore's ``use_emulator`` would override an
    endpoint named in the URL."""
    base = os.environ.get("AZURITE_BLOB_STORAGE_URL", "").rstrip("/")
    return {
        "account_name": EMULATOR_ACCOUNT,
        "account_key": EMULATOR_KEY,
        "credential_type": "access_key",
        "endpoint": f"{base}/{EMULATOR_ACCOUNT}" if base else EMULATOR_ENDPOINT,
    }


def connection_string_config(text: str) -> dict[str, Any]:
    """obstore's configuration from an Azure connection string
    (``AccountName=...;AccountKey=...;BlobEndpoint=...`` and the like)."""
    fields = _connection_fields(text)
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return emulator_config()
    config: dict[str, Any] = {}
    # The connection string's credential, not one obstore would find in another
    # AZURE_* variable first: the user named this one.
    if "accountkey" in fields:
        config["account_key"] = fields["accountkey"]
        config["credential_type"] = "access_key"
    elif "sharedaccesssignature" in fields:
        config["sas_key"] = fields["sharedaccesssignature"]
        config["credential_type"] = "sas_token"
    if "blobendpoint" in fields:
        # Printed in every storage error: checked as an endpoint in the URL is.
        check_endpoint(fields["blobendpoint"], CONNECTION_STRING)
        config["endpoint"] = fields["blobendpoint"].rstrip("/")
    elif "accountname" in fields:
        protocol = fields.get("defaultendpointsprotocol", "https")
        suffix = fields.get("endpointsuffix", "core.windows.net")
        config["endpoint"] = f"{protocol}://{fields['accountname']}.blob.{suffix}"
    account = fields.get("accountname") or _account_of(config.get("endpoint", ""))
    if account:
        config["account_name"] = account
    return config


#: The parts of a connection string, lowercased; those of Azure's other services
#: (queues, tables, files) are allowed and not used.
_CONNECTION_PARTS = {
    "defaultendpointsprotocol",
    "accountname",
    "accountkey",
    "sharedaccesssignature",
    "endpointsuffix",
    "blobendpoint",
    "usedevelopmentstorage",
    "queueendpoint",
    "tableendpoint",
    "fileendpoint",
}


def _connection_fields(text: str) -> dict[str, str]:
    """A connection string's parts by lowercased name. A part s3queue does not know
    or does not support is refused, by name only (its value may be a secret):
    ignoring it would fall back to another credential and fail far from the typo."""
    fields: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in text.split(";"))):
        name, equals, value = part.partition("=")
        if not equals:
            _refuse_part("a part without '='", "which is not a part of")
        if name.lower() == "developmentstorageproxyuri":
            _refuse_part(name, "which s3queue does not support in")
        if name.lower() not in _CONNECTION_PARTS:
            _refuse_part(name, "which is not a part of")
        fields[name.lower()] = value
    return fields


def _refuse_part(shown: str, why: str) -> NoReturn:
    raise ConfigurationError(
        f"{CONNECTION_STRING} holds {shown!r}, {why} an Azure storage connection string",
        suggestion="copy the connection string from the storage account's Access keys "
        "(or Shared access signature) page",
    )


def _account_of(endpoint: str) -> str:
    """The account a blob endpoint belongs to: a SAS connection string names none.
    ``https://ACCOUNT.blob.core.windows.net`` (and private links, sovereign clouds)
    or an emulator's ``http://host:port/ACCOUNT``; "" if neither."""
    if not endpoint:
        return ""
    parts = urlsplit(endpoint)
    label, _, rest = (parts.hostname or "").partition(".")
    if rest.startswith("blob.") or ".blob." in f".{rest}":
        return label
    return parts.path.strip("/").split("/")[0]
