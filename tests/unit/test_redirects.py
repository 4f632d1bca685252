"""
Downloads that skip the service, in memory: with redirects on, a blob's
GET is answered 307 to a URL of the store's once its conditions are
decided here; HEAD, 304, 412, 416 and what the store would answer
otherwise than this service (If-Match, If-Range, several ranges) stay
here.  The store is the in-memory one made to sign URLs
(L{RedirectingBlobStore}); the real stores' URLs are checked here for
what they carry and sign, and served for real in the integration tier.
"""

from __future__ import annotations

import calendar
import hashlib
import os
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials as UserCredentials
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from morpheo import IRedirectableBlobStore, Objects, StorageAPI
from morpheo._errors import BlobStoreError
from morpheo.blobstores import MemoryBlobStore
from morpheo.blobstores._gcs import MAX_SIGNED, GCSBlobStore
from morpheo.blobstores._s3 import MAX_PRESIGN, S3BlobStore
from morpheo.metadata import MemoryMetadataStore
from morpheo.web import BasicAuth

from .harness import (
    FORM_TYPE,
    STORE,
    FakeReactor,
    ImmediatePool,
    RedirectingBlobStore,
    Service,
    fieldsFor,
    form,
    sha256,
)

BLOB = os.urandom(10_000)
ETAG = f'"{sha256(BLOB)}"'
LIFETIME = 120


@pytest.fixture
def redirecting() -> Service:
    return Service(redirectLifetime=LIFETIME)


def storeBlob(service: Service) -> str:
    body = form(fieldsFor("data", BLOB), BLOB, filename="modèle.tar.gz", type="application/gzip")
    reply = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 201
    return f"/data/{reply.json()['uuid']}/blob"


@pytest.fixture
def blob(redirecting: Service) -> str:
    """
    A data blob with a file name and type, on the redirecting service, in
    2027: dates before and after it can be told.
    """
    redirecting.reactor.advance(calendar.timegm((2027, 1, 1, 0, 0, 0)))
    return storeBlob(redirecting)


def served(reply: Any) -> bool:
    """Whether the service sent the bytes itself (no redirect)."""
    return reply.code in (200, 206) and reply.header("location") is None and reply.body != b""


# The contract


def test_theRemoteStoresAndTheTestStoreCanRedirect() -> None:
    reactor = FakeReactor()
    pool: Any = ImmediatePool()
    for store in (
        S3BlobStore("b", "us-east-1", reactor, pool, credentials=Credentials("a", "s")),
        GCSBlobStore("g", reactor, pool, endpoint="http://127.0.0.1:1"),
        RedirectingBlobStore(reactor),
    ):
        assert verifyObject(IRedirectableBlobStore, store)
    assert S3BlobStore.maxRedirectLifetime == GCSBlobStore.maxRedirectLifetime == 7 * 24 * 3600
    assert not IRedirectableBlobStore.providedBy(MemoryBlobStore(reactor))


def test_redirectsNeedAStoreThatServesDownloads() -> None:
    reactor = FakeReactor()
    objects = Objects(
        MemoryMetadataStore(reactor, owner="unit"),
        MemoryBlobStore(reactor),
        reactor=reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="not mock"):
        StorageAPI(objects, BasicAuth({"u": "p"}), redirectLifetime=60)


# The redirect


def test_aGetIsRedirectedToTheStore(redirecting: Service, blob: str) -> None:
    reply = redirecting.request("GET", blob)
    assert (reply.code, reply.body, reply.length) == (307, b"", 0)
    assert reply.header("cache-control") == "no-store"
    location = urlsplit(reply.header("location") or "")
    [key] = redirecting.blobKeys()
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{STORE}/{key}"
    # What the store is to answer with: the service's own type and file name.
    own = Service()
    direct = own.request("GET", storeBlob(own))
    assert dict(parse_qsl(location.query)) == {
        "lifetime": str(LIFETIME),
        "type": "application/gzip",
        "disposition": direct.header("content-disposition"),
    }


def test_withoutRedirectsTheServiceServes(service: Service) -> None:
    reply = service.request("GET", storeBlob(service))
    assert served(reply) and reply.body == BLOB


def test_headAnswersHereWithTheHeadersOfToday(redirecting: Service, blob: str) -> None:
    own = Service()
    today = own.request("HEAD", storeBlob(own))
    head = redirecting.request("HEAD", blob)
    assert (head.code, head.body, head.header("location")) == (200, b"", None)
    for name in (
        "etag", "content-type", "content-length", "content-disposition", "accept-ranges",
        "repr-digest",
    ):  # fmt: skip
        assert head.header(name) == today.header(name), name


@pytest.mark.parametrize(
    "headers",
    [
        {"If-None-Match": ETAG},
        {"If-None-Match": "*"},
        {"If-Modified-Since": formatdate(2**31 - 1, usegmt=True)},
    ],
)
def test_notModifiedIsAnsweredHere(
    redirecting: Service, blob: str, headers: dict[str, str]
) -> None:
    reply = redirecting.request("GET", blob, headers=headers)
    assert (reply.code, reply.header("location")) == (304, None)
    assert reply.header("etag") == ETAG


@pytest.mark.parametrize(
    "headers",
    [{"If-Match": '"other"'}, {"If-Unmodified-Since": formatdate(1000, usegmt=True)}],
)
def test_failedPreconditionsAreAnsweredHere(
    redirecting: Service, blob: str, headers: dict[str, str]
) -> None:
    reply = redirecting.request("GET", blob, headers=headers)
    assert (reply.code, reply.header("location")) == (412, None)


@pytest.mark.parametrize(
    "headers",
    [
        {"If-None-Match": '"an-older-version"'},
        {"If-None-Match": '"an-older-version"', "If-Modified-Since": formatdate(2**31 - 1)},
        {"If-Match": "*"},
        {"If-Match": "*", "If-Unmodified-Since": formatdate(1000, usegmt=True)},
        {"Range": "bytes=100-199"},
        {"Range": "bytes=-100"},
        {"Range": "bytes=9000-"},
        {"Range": "bytes=9000-99999"},
    ],
)
def test_whatTheStoreAnswersAlikeIsRedirected(
    redirecting: Service, blob: str, headers: dict[str, str]
) -> None:
    """The client repeats these to the store, which reads them as the service does."""
    reply = redirecting.request("GET", blob, headers=headers)
    assert reply.code == 307, reply.body


@pytest.mark.parametrize(
    ("headers", "code", "body"),
    [
        # The store would judge these ETags by its own, and refuse or send all.
        ({"If-Match": ETAG}, 200, BLOB),
        # ... and these dates by its copy's time.
        ({"If-Unmodified-Since": formatdate(2**31 - 1, usegmt=True)}, 200, BLOB),
        ({"If-Modified-Since": formatdate(1000, usegmt=True)}, 200, BLOB),
        ({"If-Range": ETAG, "Range": "bytes=0-9"}, 206, BLOB[:10]),
        ({"If-Range": '"other"', "Range": "bytes=0-9"}, 200, BLOB),
        # S3 serves one range; a Range ignored here may not be ignored there.
        ({"Range": "bytes=0-9,20-29"}, 206, None),
        ({"Range": "bytes=5-1"}, 200, BLOB),
        ({"Range": "bytes = 0-9"}, 206, BLOB[:10]),
    ],
)
def test_whatTheStoreWouldAnswerOtherwiseIsServedHere(
    redirecting: Service, blob: str, headers: dict[str, str], code: int, body: bytes | None
) -> None:
    reply = redirecting.request("GET", blob, headers=headers)
    assert served(reply) and reply.code == code
    if body is not None:
        assert reply.body == body


def test_anUnsatisfiableRangeIsAnsweredHere(redirecting: Service, blob: str) -> None:
    reply = redirecting.request("GET", blob, headers={"Range": "bytes=20000-"})
    assert (reply.code, reply.header("location")) == (416, None)
    assert reply.header("content-range") == f"bytes */{len(BLOB)}"


def test_aStoreThatCannotSignIsABadGateway(redirecting: Service, blob: str) -> None:
    redirecting.blobs.down = True
    reply = redirecting.request("GET", blob)
    assert reply.code == 500  # the in-memory store's failures are this service's
    assert reply.error == "the blob store (mock) failed; try again later"


def test_anUnknownBlobIs404NotARedirect(redirecting: Service) -> None:
    reply = redirecting.request("GET", "/data/2b6a3a3e-9f4e-4c1d-8d7a-3c2f1e0d9b8a/blob")
    assert (reply.code, reply.header("location")) == (404, None)


# The stores' own URLs


def result(d: Deferred[Any]) -> Any:
    """What a Deferred that has fired holds (the pool runs work at once)."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def test_s3PresignsAGetWithTheTypeAndNameInTheSignedQuery() -> None:
    store = S3BlobStore(
        "bucket", "eu-west-3", FakeReactor(), ImmediatePool(),  # type: ignore[arg-type]
        endpoint="http://127.0.0.1:8333", credentials=Credentials("AKID", "secret", "tok"),
    )  # fmt: skip
    url = result(
        store.presignedURL("data/a b", 300, "application/gzip", 'attachment; filename="x"')
    )
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("127.0.0.1:8333", "/bucket/data/a%20b")
    query = dict(parse_qsl(parts.query))
    assert query["response-content-type"] == "application/gzip"
    assert query["response-content-disposition"] == 'attachment; filename="x"'
    assert query["X-Amz-Expires"] == "300"
    assert query["X-Amz-Security-Token"] == "tok"
    assert query["X-Amz-Credential"].startswith("AKID/") and query["X-Amz-SignedHeaders"] == "host"
    assert len(query["X-Amz-Signature"]) == 64


@pytest.mark.parametrize("lifetime", [0, MAX_PRESIGN + 1])
def test_s3RefusesALifetimeBeyondSigV4s(lifetime: int) -> None:
    store = S3BlobStore(
        "b", "us-east-1", FakeReactor(), ImmediatePool(),  # type: ignore[arg-type]
        credentials=Credentials("a", "s"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="1 to 604800 seconds"):
        store.presignedURL("k", lifetime, "t", "d")


def makeServiceAccount() -> tuple[service_account.Credentials, rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = {
        "type": "service_account",
        "private_key": pem.decode(),
        "client_email": "storage@morpheo-test.iam.gserviceaccount.com",
        "token_uri": "http://127.0.0.1:1/token",
    }
    return service_account.Credentials.from_service_account_info(info), key.public_key()


def gcsStore(credentials: Any, endpoint: str | None = None, now: float = 0) -> GCSBlobStore:
    clock = Clock()
    clock.advance(now)
    reactor = FakeReactor()
    reactor.seconds = clock.seconds  # type: ignore[method-assign]
    return GCSBlobStore(
        "my-bucket", reactor, ImmediatePool(), endpoint=endpoint,  # type: ignore[arg-type]
        credentials=credentials,
    )  # fmt: skip


def test_gcsSignsAV4URLTheServiceAccountsKeyVerifies() -> None:
    """
    The URL's signature, checked with the public key against the string to
    sign rebuilt from the URL as Google's V4 documentation says: the type
    and file name are in what is signed.
    """
    credentials, public = makeServiceAccount()
    now = calendar.timegm((2026, 12, 1, 9, 30, 0))
    store = gcsStore(credentials, now=now)
    disposition = "attachment; filename=\"mod_le.bin\"; filename*=UTF-8''mod%C3%A8le.bin"
    url = result(store.presignedURL("data/x~y z", 900, "application/gzip", disposition))
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "storage.googleapis.com")
    assert parts.path == "/my-bucket/data/x~y%20z"
    pairs = [p.split("=", 1) for p in parts.query.split("&")]
    name, signature = pairs.pop()
    assert name == "X-Goog-Signature"
    query = {unquote(k): unquote(v) for k, v in pairs}
    assert query["response-content-type"] == "application/gzip"
    assert query["response-content-disposition"] == disposition
    assert query["X-Goog-Date"] == "20261201T093000Z" and query["X-Goog-Expires"] == "900"
    scope = "20261201/auto/storage/goog4_request"
    assert query["X-Goog-Credential"] == f"{credentials.signer_email}/{scope}"
    assert [k for k, _ in pairs] == sorted(k for k, _ in pairs)
    canonical = "\n".join(
        [
            "GET", parts.path, "&".join(f"{k}={v}" for k, v in pairs),
            "host:storage.googleapis.com", "", "host", "UNSIGNED-PAYLOAD",
        ]
    )  # fmt: skip
    toSign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            query["X-Goog-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    public.verify(bytes.fromhex(signature), toSign.encode(), padding.PKCS1v15(), hashes.SHA256())


def test_gcsSignsForItsEndpointPathStyle() -> None:
    credentials, _ = makeServiceAccount()
    url = result(gcsStore(credentials, "http://127.0.0.1:4443").presignedURL("k/1", 60, "t", "d"))
    assert url.startswith("http://127.0.0.1:4443/my-bucket/k/1?")


def test_gcsCredentialsThatCannotSignAreRefused() -> None:
    """User credentials (gcloud's) hold no key: Google cannot tell who signed."""
    store = gcsStore(UserCredentials(token="a-token"))
    with pytest.raises(BlobStoreError, match="cannot sign URLs: use a service account"):
        result(store.presignedURL("k", 60, "t", "d"))


def test_anAnonymousEmulatorGetsItsPlainMediaURL() -> None:
    pool: Any = ImmediatePool()
    store = GCSBlobStore("my-bucket", FakeReactor(), pool, endpoint="http://127.0.0.1:4443")
    url = result(store.presignedURL("data/k", 60, "t", "d"))
    assert url == "http://127.0.0.1:4443/download/storage/v1/b/my-bucket/o/data%2Fk?alt=media"


@pytest.mark.parametrize("lifetime", [0, MAX_SIGNED + 1])
def test_gcsRefusesALifetimeBeyondV4s(lifetime: int) -> None:
    credentials, _ = makeServiceAccount()
    with pytest.raises(ValueError, match="1 to 604800 seconds"):
        gcsStore(credentials).presignedURL("k", lifetime, "t", "d")
