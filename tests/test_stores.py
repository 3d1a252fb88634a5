"""Stores beyond S3: Azure Blob (on Azurite) and GCS (experimental; fake-gcs-server
shows the conditional-write probe refusing a store that cannot prove it).

The storage contract, exact accounting and kill -9 run on every store in
test_storage.py and test_multiprocess.py; this module holds what is particular to
each: URLs, credentials, errors, and the Azure traps (quoted ETags, 404 on deleting
a missing blob, 256 keys per batch, 5,000 per LIST page).
"""

from __future__ import annotations

import http.server
import threading
import uuid
from pathlib import Path

import obstore.exceptions as oe
import pytest

import tests.azurite
from s3queue import JobContext, Queue, Worker
from s3queue.errors import (
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    Throttled,
)
from s3queue.queue import probe_conditional_writes
from s3queue.storage import (
    RetryingStorage,
    RetryPolicy,
    UpdateVersion,
    azure,
    gcs,
    open_raw_storage,
    open_storage,
    s3,
)
from s3queue.storage.azure import (
    EMULATOR_ACCOUNT,
    EMULATOR_KEY,
    AzureStorage,
    connection_string_config,
)
from s3queue.storage.cloud import Dialect, translate
from s3queue.storage.faults import Fault, FaultyStorage
from s3queue.storage.gcs import GCSStorage
from tests.azurite import AzuriteServer, azurite_executable, start_azurite
from tests.conftest import BUCKET, FAST, run_until, started
from tests.fakegcs import FakeGCS
from tests.s3server import free_port

AZURE_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)


@pytest.fixture
def no_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AZURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def unique() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


# --- Azure URLs and credentials ---------------------------------------------------------


@pytest.mark.parametrize("scheme", ["az", "azure"])
def test_azure_urls_open_with_either_scheme(scheme: str) -> None:
    store = open_storage(f"{scheme}://jobs-container/app/q?account=acme")
    assert store.url == "az://jobs-container/app/q?account=acme"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("az://acme:c2VjcmV0@jobs/p", "takes no credentials"),
        ("az://Jobs/p?account=acme", "invalid container name 'Jobs'"),
        ("az://jo/p?account=acme", "invalid container name 'jo'"),
        ("az://a--b/p?account=acme", "invalid container name 'a--b'"),
        ("az:///p?account=acme", "no container name"),
        ("az://jobs/p?acount=acme", "unknown option 'acount'"),
        ("az://jobs/p?account=acme&endpoint=ftp://x", "invalid endpoint"),
        ("az://jobs/p?emulator=maybe", "invalid value 'maybe' for emulator"),
        # Given twice, one of the two would be ignored.
        ("az://jobs/p?account=acme&account=other", "option 'account' is given twice"),
        # A port is no part of a container name, numeric or not, in range or not.
        ("az://jobs:443/p?account=acme", "invalid container name 'jobs:443'"),
        ("az://jobs:abc/p?account=acme", "invalid container name 'jobs:abc'"),
        ("az://jobs:99999/p?account=acme", "invalid container name 'jobs:99999'"),
        # A SAS pasted into the query: refused, and its signature never printed.
        ("az://jobs/p?account=acme&sv=2022-11-02&sig=c2VjcmV0", "unknown option 'sig'"),
        # A connection string or SAS pasted as the value of an option, or into the
        # account or the endpoint, plain or percent-encoded: refused, unprinted.
        (
            "az://jobs/p?connection_string=AccountName=acme;AccountKey=c2VjcmV0",
            "unknown option 'connection_string'",
        ),
        (
            "az://jobs/p?cs=BlobEndpoint=https://a.blob.core.windows.net/;"
            "SharedAccessSignature=sv=2022-11-02%26sig=c2VjcmV0",
            "unknown option 'cs'",
        ),
        ("az://jobs/p?account=acme;AccountKey=c2VjcmV0", "invalid account name"),
        ("az://jobs/p?account=Acme", "invalid account name 'Acme'"),
        (
            "az://jobs/p?account=acme&endpoint=https://acme.blob.core.windows.net/"
            "%3Fsv%3D2022-11-02%26sig%3Dc2VjcmV0",
            "invalid endpoint",
        ),
    ],
)
def test_bad_azure_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        open_storage(url)
    assert "c2VjcmV0" not in str(info.value)
    assert info.value.suggestion


def test_an_unnamed_account_names_both_ways_to_name_it(no_azure_env: None) -> None:
    with pytest.raises(ConfigurationError, match="Account must be specified") as info:
        open_storage("az://jobs/p")
    assert "?account=NAME" in str(info.value)
    assert "AZURE_STORAGE_ACCOUNT_NAME" in str(info.value)


def test_connection_strings_map_onto_the_store_configuration() -> None:
    assert connection_string_config(
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;"
        "EndpointSuffix=core.windows.net"
    ) == {
        "account_name": "acme",
        "account_key": "a2V5",
        "credential_type": "access_key",
        "endpoint": "https://acme.blob.core.windows.net",
    }
    assert connection_string_config(
        "BlobEndpoint=https://acme.blob.core.windows.net/;SharedAccessSignature=sv=2022&sig=abc"
    ) == {
        "sas_key": "sv=2022&sig=abc",
        "credential_type": "sas_token",
        "endpoint": "https://acme.blob.core.windows.net",
        "account_name": "acme",
    }
    assert connection_string_config("UseDevelopmentStorage=true")["account_name"] == (
        EMULATOR_ACCOUNT
    )
    assert connection_string_config("") == {}
    # The protocol holds without an explicit suffix too (Azure's default one).
    assert (
        connection_string_config("DefaultEndpointsProtocol=http;AccountName=acme;AccountKey=a2V5")[
            "endpoint"
        ]
        == "http://acme.blob.core.windows.net"
    )


def test_a_sas_connection_string_names_its_account_by_its_endpoint() -> None:
    """The portal's SAS connection string has no AccountName: the account is the
    first label of the blob endpoint (or, on an emulator, its first path segment)."""
    config = connection_string_config(
        "BlobEndpoint=https://acme.blob.core.windows.net/;"
        "QueueEndpoint=https://acme.queue.core.windows.net/;SharedAccessSignature=sv=2022&sig=abc"
    )
    assert config["account_name"] == "acme"
    emulated = connection_string_config(
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=sv=1&sig=a"
    )
    assert emulated["account_name"] == EMULATOR_ACCOUNT


@pytest.mark.parametrize(
    "endpoint", ["http://user:c2VjcmV0@acme.example/", "acme.blob.core.windows.net", "ftp://x/"]
)
def test_a_bad_blob_endpoint_in_the_connection_string_is_refused_unprinted(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, no_azure_env: None
) -> None:
    """As an endpoint in the URL is: it is printed in every storage error."""
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"AccountName=acme;AccountKey=a2V5;BlobEndpoint={endpoint}",
    )
    with pytest.raises(ConfigurationError, match="AZURE_STORAGE_CONNECTION_STRING") as info:
        open_storage("az://jobs/p")
    assert "c2VjcmV0" not in str(info.value)


# --- errors, as obstore words them ------------------------------------------------------

#: What obstore raises for an HTTP answer: its status, then the store's body.
ANSWER = "Error performing PUT http://h/c/p/k in 5ms - Server returned non-2xx status code: {}"


def xml(code: str, message: str) -> str:
    return f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"


#: Azure deletes through blob batches, whose failures carry no HTTP status line:
#: "(code: NNN)" and a reason, as Azurite answered them.
BATCH = "Generic MicrosoftAzure error: Bulk delete request failed for key p/k: {}"

ERRORS: list[tuple[Exception, Dialect, type[StorageError], bool]] = [
    # A blob batch refused: not an unreachable server, and not worth retrying.
    (
        oe.GenericError(BATCH.format("There is currently a lease on the blob. (code: 412)")),
        azure.DIALECT,
        StorageError,
        False,
    ),
    (
        oe.GenericError(BATCH.format("This request is not authorized. (code: 403)")),
        azure.DIALECT,
        StorageAuthError,
        False,
    ),
    (
        FileNotFoundError(BATCH.format("The specified container does not exist. (code: 404)")),
        azure.DIALECT,
        NotFound,
        False,
    ),
    # 409s that are no lost condition: the write was refused for another reason.
    (
        oe.AlreadyExistsError(
            ANSWER.format("409 Conflict: ")
            + xml("ContainerBeingDeleted", "The specified container is being deleted.")
        ),
        azure.DIALECT,
        StorageError,
        False,
    ),
    (
        oe.GenericError(
            ANSWER.format("409 Conflict: ")
            + xml("BlobImmutableDueToPolicy", "This operation is not permitted.")
        ),
        azure.DIALECT,
        StorageError,
        False,
    ),
    # S3's "a conflicting conditional operation is in progress; retry".
    (
        oe.GenericError(
            ANSWER.format("409 Conflict: ")
            + xml("ConditionalRequestConflict", "A conflicting operation occurred.")
        ),
        s3.DIALECT,
        StorageUnavailable,
        True,
    ),
    # A lease held on the blob is no failed If-Match.
    (
        oe.PreconditionError(
            ANSWER.format("412 Precondition Failed: ")
            + xml("LeaseIdMissing", "There is currently a lease on the blob.")
        ),
        azure.DIALECT,
        StorageError,
        False,
    ),
    # Throttling: GCS answers 429 to more than one write a second to an object.
    (
        oe.GenericError(ANSWER.format('429 Too Many Requests: {"message": "rate"}')),
        gcs.DIALECT,
        Throttled,
        True,
    ),
    # A store that does not implement a header will not next time either.
    (
        oe.GenericError(
            ANSWER.format("501 Not Implemented: ")
            + xml(
                "NotImplemented",
                "A header you provided implies functionality that is not implemented",
            )
        ),
        s3.DIALECT,
        StorageError,
        False,
    ),
    # A bare 503 (a proxy's) may follow a write that landed: outcome unknown, so
    # not Throttled, which tells the retry layer nothing was written.
    (
        oe.GenericError(ANSWER.format("503 Service Unavailable: ")),
        s3.DIALECT,
        StorageUnavailable,
        True,
    ),
    (
        oe.GenericError(ANSWER.format("503 Slow Down: ") + xml("SlowDown", "Reduce your rate.")),
        s3.DIALECT,
        Throttled,
        True,
    ),
    # What stays as it was: lost conditions, and a missing bucket.
    (
        oe.AlreadyExistsError(
            ANSWER.format("409 Conflict: ") + xml("BlobAlreadyExists", "The blob already exists.")
        ),
        azure.DIALECT,
        PreconditionFailed,
        True,
    ),
    (
        oe.PreconditionError(
            ANSWER.format("412 Precondition Failed: ")
            + xml("ConditionNotMet", "The condition specified is not met.")
        ),
        azure.DIALECT,
        PreconditionFailed,
        True,
    ),
    (
        oe.AlreadyExistsError(
            ANSWER.format("412 Precondition Failed: ")
            + xml("PreconditionFailed", "At least one of the preconditions did not hold")
        ),
        s3.DIALECT,
        PreconditionFailed,
        True,
    ),
]


@pytest.mark.parametrize(("error", "dialect", "kind", "retriable"), ERRORS)
def test_store_errors_are_classified_by_what_they_mean(
    error: Exception, dialect: Dialect, kind: type[StorageError], retriable: bool
) -> None:
    translated = translate(error, dialect=dialect, endpoint="http://h", key="k")
    assert type(translated) is kind, translated
    assert translated.retriable is retriable
    assert "cannot reach" not in str(translated)
    if kind is not PreconditionFailed:
        assert "conditional write" not in str(translated)


async def test_a_store_that_does_not_implement_conditional_writes_fails_the_probe() -> None:
    """S3 before conditional writes, and stores like it, answer 501 NotImplemented:
    no retry changes that, and the probe says what is missing."""
    not_implemented = oe.GenericError(
        ANSWER.format("501 Not Implemented: ")
        + xml(
            "NotImplemented", "A header you provided implies functionality that is not implemented"
        )
    )
    store = FaultyStorage(open_raw_storage("memory://"))
    store.inject(
        Fault(
            "put",
            times=100,
            error=lambda: translate(not_implemented, dialect=s3.DIALECT, endpoint="http://h"),
        )
    )
    retrying = RetryingStorage(store, RetryPolicy(attempts=3, initial=0.001, max_delay=0.001))
    with pytest.raises(ConfigurationError, match="failed the conditional-write probe"):
        await probe_conditional_writes(retrying, "q")
    assert store.injected == 1


# --- Azure on Azurite ---------------------------------------------------------------------


async def test_a_connection_string_in_the_environment_opens_a_queue(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch, no_azure_env: None
) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};"
        f"AccountKey={EMULATOR_KEY};BlobEndpoint={azurite.endpoint};",
    )
    q = await Queue.open(f"az://{BUCKET}/{unique()}", "cs", shards=1)
    [mid] = await q.enqueue_many([{"n": 1}])
    [lease] = await q.claim(1, 30)
    await q.ack(lease, result="done")
    info = await q.get(mid)
    assert info is not None
    assert info.status == "completed"
    await q.close()


async def test_a_sas_connection_string_alone_opens_a_store(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch, no_azure_env: None
) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"BlobEndpoint={azurite.endpoint};SharedAccessSignature={azurite.account_sas()}",
    )
    # A store, not a queue: Azurite answers a blob batch (every delete) signed with
    # a SAS with 500, which Azure does not.
    store = open_storage(f"az://{BUCKET}/{unique()}")
    await store.put("k", b"v", mode="create")
    assert [entry.key for entry in await store.list("")] == ["k"]
    await store.close()


async def test_the_url_endpoint_wins_over_azure_storage_use_emulator(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch, no_azure_env: None
) -> None:
    """obstore's use_emulator (AZURE_STORAGE_USE_EMULATOR) replaces the endpoint with
    127.0.0.1:10000: the endpoint the URL names is where requests must go, and what
    the errors name."""
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    store = open_storage(azurite.url(BUCKET, unique()))
    await store.put("k", b"v")
    await store.close()


async def test_a_missing_container_is_not_found_with_the_fix(azurite: AzuriteServer) -> None:
    store = open_storage(azurite.url("no-such-container", "p"))
    for attempt in (
        store.get("x"),
        store.put("x", b"x"),
        store.list("x/"),
        # Azure deletes through blob batches, which word it differently.
        store.delete("x"),
        store.delete_many(["x", "y"]),
    ):
        with pytest.raises(NotFound, match="the container does not exist") as info:
            await attempt
        assert info.value.suggestion == "create the container, or fix its name in the URL"
    await store.close()


async def test_a_wrong_account_key_is_an_auth_error_naming_the_variables(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch, no_azure_env: None
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmd3cm9uZ3dyb25nd3Jvbmc=")
    url = f"az://{BUCKET}/p?account={EMULATOR_ACCOUNT}&endpoint={azurite.endpoint}"
    store = open_storage(url)
    with pytest.raises(StorageAuthError) as info:
        await store.put("x", b"x")
    assert "AZURE_STORAGE_ACCOUNT_KEY" in str(info.value)
    assert "\n" not in str(info.value)
    await store.close()


async def test_every_call_hands_out_the_same_quoted_version_tag(azurite: AzuriteServer) -> None:
    store = open_storage(azurite.url(BUCKET, unique()))
    tag = await store.put("k", b"one", mode="create")
    read = await store.get("k")
    assert read is not None
    assert read.etag == tag
    assert tag.startswith('"')
    assert await store.put("k", b"two", mode=UpdateVersion(read.etag))
    await store.close()


async def test_deleting_missing_blobs_is_not_an_error_alone_or_in_a_batch(
    azurite: AzuriteServer,
) -> None:
    store = open_storage(azurite.url(BUCKET, unique()))
    await store.delete("never-written")
    keys = [f"k/{n:04d}" for n in range(600)]
    for key in keys[:300]:
        await store.put(key, b"x")
    store.counts.reset()
    await store.delete_many(keys[:300])
    # 300 keys: two blob batches of at most 256.
    assert store.counts.delete == 2
    for key in keys[300:]:
        await store.put(key, b"x")
    await store.delete_many(keys)  # half of them are gone already
    assert await store.list("k/") == []
    await store.close()


async def test_a_listing_page_holds_five_thousand_blobs(azurite: AzuriteServer) -> None:
    store = open_storage(azurite.url(BUCKET, unique()))
    for n in range(1200):
        await store.put(f"d/{n:05d}", b"x")
    store.counts.reset()
    listed = await store.list("d/", start_after="d/00100")
    assert [entry.key for entry in listed] == [f"d/{n:05d}" for n in range(101, 1200)]
    assert store.counts.list == 1
    await store.close()


async def test_a_worker_runs_jobs_on_azure(azurite: AzuriteServer) -> None:
    q = await Queue.open(azurite.url(BUCKET, unique()), "round-trip", shards=2)
    ids = await q.enqueue_many([{"n": n} for n in range(20)])

    async def double(payload: dict[str, int], ctx: JobContext) -> int:
        return payload["n"] * 2

    await run_until(Worker(q, double, concurrency=8, polling=FAST), "completed", count=20)
    results = [await q.get(mid) for mid in ids]
    assert [info.result if info else None for info in results] == [n * 2 for n in range(20)]
    assert (await q.stats()).completed == 20
    await q.close()


# --- GCS (experimental) -----------------------------------------------------------------


def test_gcs_urls_open_and_bad_ones_name_the_problem() -> None:
    store = open_storage("gs://jobs_bucket/app?endpoint=http://127.0.0.1:1")
    assert isinstance(store.inner, GCSStorage)  # type: ignore[attr-defined]
    assert store.url == "gs://jobs_bucket/app?endpoint=http://127.0.0.1:1"
    for url, message in [
        ("gs://key:secret@jobs/p", "takes no credentials"),
        ("gs://Jobs/p", "invalid bucket name"),
        ("gs://jobs/p?region=eu", "unknown option 'region'"),
        ("gs://jobs:abc/p", "invalid bucket name 'jobs:abc'"),
        ("gs://jobs/p?allow_http=true&allow_http=false", "option 'allow_http' is given twice"),
        (
            "s3://jobs/p?endpoint=http://127.0.0.1:1&endpoint=http://127.0.0.1:2",
            "option 'endpoint' is given twice",
        ),
        ("gs://jobs:99999/p", "invalid bucket name 'jobs:99999'"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            open_storage(url)


async def test_fake_gcs_server_is_refused_by_the_probe_and_nothing_is_left(
    fake_gcs: FakeGCS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", str(fake_gcs.service_account))
    with pytest.raises(ConfigurationError, match="failed the conditional-write probe") as info:
        await Queue.open(fake_gcs.url(BUCKET, unique()), "jobs")
    assert "If-None-Match" in str(info.value)
    assert "compare-and-swap" in str(info.value)
    assert fake_gcs.object_names(BUCKET) == []
    assert not any((fake_gcs.root / BUCKET).iterdir())


def test_every_obstore_store_is_one_class() -> None:
    assert isinstance(open_storage("az://jobs/p?account=acme").inner, AzureStorage)  # type: ignore[attr-defined]


def test_a_server_that_does_not_start_fails_its_tests_rather_than_skipping_them() -> None:
    def installed() -> None:
        return None

    def missing() -> None:
        raise RuntimeError("azurite-blob is missing")

    def exits() -> None:
        raise RuntimeError("Azurite exited early")

    with pytest.raises(RuntimeError, match="exited early"):
        started("Azurite", installed, exits)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        started("Azurite", missing, exits)


def test_azurite_never_takes_another_server_on_its_port_for_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -n 2 each test worker starts its servers: a port chosen free may be
    bound by another before Azurite binds it, and the other answers there."""
    started("Azurite", azurite_executable, lambda: None)
    foreign = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    ports = iter([foreign.server_port, free_port()])
    monkeypatch.setattr(tests.azurite, "free_port", lambda: next(ports))
    server = start_azurite(tmp_path)
    try:
        assert server.port != foreign.server_port
        assert server.process.poll() is None
    finally:
        server.stop()
        foreign.shutdown()


def test_a_connection_string_part_that_is_not_one_is_refused_by_name_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", "AccountName=acme;AcountKey=c2VjcmV0LXZhbHVl"
    )
    with pytest.raises(ConfigurationError, match="'AcountKey'") as info:
        open_storage("az://jobs/p")
    assert "c2VjcmV0" not in str(info.value)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=acme;c2VjcmV0LXZhbHVl")
    with pytest.raises(ConfigurationError, match="a part without '='") as info:
        open_storage("az://jobs/p")
    assert "c2VjcmV0" not in str(info.value)


async def test_the_connection_strings_credential_wins_over_a_stray_one_in_the_environment(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch, no_azure_env: None
) -> None:
    # obstore would take an account key from the environment over a SAS it is given.
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmd3cm9uZ3dyb25nd3Jvbmc=")
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"BlobEndpoint={azurite.endpoint};SharedAccessSignature={azurite.account_sas()}",
    )
    store = open_storage(f"az://{BUCKET}/{unique()}")
    await store.put("k", b"v")
    assert (await store.get("k")) is not None
    await store.close()
