# -*- test-case-name: tests.unit.test_unknown_sizes,tests.integration.test_blobstore_contract -*-
"""
Blobs as objects in a Google Cloud Storage bucket, through the JSON API.

Uploads are resumable uploads whose chunks (multiples of 256 KiB) are each
one PUT whose body streams straight from the writer: when the blob's size
is known, every chunk's length and C{Content-Range} are known before its
first byte and nothing is buffered.  A blob whose size is known only at its
end is sent in whole chunks, each buffered until it is in, with
C{Content-Range: bytes a-b/*}; the last one, at C{finish()}, gives the size
(C{bytes a-b/N}, or C{bytes */0} for an empty blob).  The object exists only
once the last chunk is accepted, and its last byte waits for C{finish()}.

A session is known by its URL alone: the writer gives it as its handle
(L{IBlobWriter.started}), the domain layer records it in the upload's
claim, and the process that sweeps the claim of a killed one cancels the
session with L{GCSBlobStore.abandon}, which calls only URLs of this
store's own bucket and endpoint.  A session whose URL was never recorded
(its process died first) expires by itself after a week.

Credentials come from google-auth's Application Default Credentials,
looked up and refreshed in the thread pool (both may block on files or the
network); with another endpoint (an emulator) requests are anonymous unless
C{GOOGLE_APPLICATION_CREDENTIALS} names a credentials file.

Downloads can be handed to the client as V4 signed URLs of the XML API
(L{signedURL}), signed in the thread pool by credentials that can sign (a
service account's key signs locally; impersonated credentials ask IAM).
An emulator spoken to anonymously checks no signature: its clients get the
object's plain media URL, which never expires.
The sweep lists the service's objects a page (C{objects.list}) at a time,
kind by kind.  A blob written over many requests (L{GCSBlobStore.begin},
L{GCSBlobStore.append}) is one resumable session too: see
L{morpheo.blobstores._gcsresumable}.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from .._errors import BlobNotFound, BlobStoreError
from .._interfaces import (
    KEY_PAGE,
    IAbandonableBlobStore,
    IAppender,
    IRedirectableBlobStore,
    IResumableBlobStore,
    ISweepableBlobStore,
)
from .._kinds import KINDS, isBlobKey
from ._bodies import StreamBody
from ._flow import MemoryBudget
from ._gcsresumable import GCSResumable
from ._http import asStoreError
from ._httpstore import HTTPBlobStore, parseTime
from ._segmented import StreamingWriter

MiB = 1024 * 1024
CHUNK_UNIT = 256 * 1024
#: The largest object Google Cloud Storage takes: 5 TiB.
MAX_OBJECT = 5 * 1024**4
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
GOOGLE = "https://storage.googleapis.com"
#: The longest a V4 signed URL may live: 7 days.
MAX_SIGNED = 7 * 24 * 3600

_log = Logger()

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _encode(text: str) -> str:
    """Percent-encoding of everything but RFC 3986's unreserved characters."""
    return quote(text, safe="")


def signedURL(
    sign: Callable[[bytes], bytes],
    email: str,
    base: str,
    path: str,
    query: Mapping[str, str],
    lifetime: int,
    now: float,
) -> str:
    """
    A V4 signed URL (C{GOOG4-RSA-SHA256}) for a GET of C{path} at C{base}
    (C{https://storage.googleapis.com}), carrying C{query} too, valid
    C{lifetime} seconds from C{now}: the host is the one signed header and
    the payload is unsigned, as the XML API wants for a download.  C{sign}
    makes the RSA-SHA256 signature of C{email}'s key.
    """
    host = urlsplit(base).netloc
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    scope = f"{stamp[:8]}/auto/storage/goog4_request"
    params = {
        **query,
        "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
        "X-Goog-Credential": f"{email}/{scope}",
        "X-Goog-Date": stamp,
        "X-Goog-Expires": str(lifetime),
        "X-Goog-SignedHeaders": "host",
    }
    canonicalQuery = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
    canonical = "\n".join(
        ["GET", path, canonicalQuery, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    toSign = f"GOOG4-RSA-SHA256\n{stamp}\n{scope}\n{digest}"
    signature = sign(toSign.encode()).hex()
    return f"{base.rstrip('/')}{path}?{canonicalQuery}&X-Goog-Signature={signature}"


class _GCSWriter(StreamingWriter[None]):
    """
    A resumable upload session, its chunks sent one after the other; its
    handle is the session's URL.
    """

    def __init__(
        self, store: GCSBlobStore, key: str, size: int | None, chunkSize: int | None = None
    ) -> None:
        self._store = store
        self._session: str | None = None
        self._chunkSize = store.chunkSize if chunkSize is None else chunkSize
        if size is None:
            self.maximum = MAX_OBJECT
        super().__init__(
            key,
            size,
            store._reactor,
            store._pool,
            store.highWater,
            step=self._chunkSize,
            share=store.budget.join(),
        )

    def _segments(self) -> list[tuple[int, int]]:
        assert self.size is not None
        if self.size == 0:
            return [(0, 0)]
        step = self._chunkSize
        return [(o, min(step, self.size - o)) for o in range(0, self.size, step)]

    def _begin(self) -> Deferred[None]:
        what = f"GCS starting the upload of {self.key}"

        def started(session: str) -> None:
            self._session = session

        return self._store._startSession(self.key, self.size, what).addCallback(started)

    def _handle(self) -> str | None:
        return self._session

    def _sendSegment(
        self, index: int, offset: int, length: int, body: StreamBody
    ) -> Deferred[None]:
        assert self._session is not None
        what = f"GCS upload of {self.key} (bytes {offset}-{offset + length - 1})"
        # Of unknown size, the total is said with the last chunk only.
        last = self._planned and index == len(self._segmentList) - 1
        total = str(self._total) if last or self.size is not None else "*"
        if length:
            contentRange = f"bytes {offset}-{offset + length - 1}/{total}"
        else:
            contentRange = f"bytes */{total}"
        ok = (200, 201) if last else (308,)

        def accepted(response: IResponse) -> Deferred[None]:
            if not last:
                # The session must hold everything sent so far, or the next
                # chunk would leave a hole we no longer have the bytes for.
                got = response.headers.getRawHeaders("range", [""])[0]
                if got != f"bytes=0-{offset + length - 1}":
                    raise BlobStoreError(f"{what}: GCS kept only {got or 'nothing'}")
            return self._store._drained(response)

        d = self._store._call(
            "PUT",
            self._session,
            what,
            headers={"Content-Range": contentRange},
            body=body,
            ok=ok,
        )
        return d.addCallback(accepted)

    def _cleanup(self, committed: bool) -> Deferred[None]:
        if committed:
            return self._store.delete(self.key)
        if self._session is None:
            return succeed(None)
        return self._store._cancelSession(self.key, self._session)


def parseListing(body: bytes, limit: float) -> tuple[list[str], str | None]:
    """
    The service's keys in one page of C{objects.list} modified by C{limit}
    (the time), and the token of the next page, if any.
    """
    document = json.loads(body)
    keys = []
    for item in document.get("items") or ():
        name = item.get("name") or ""
        times = [parseTime(item.get(field)) for field in ("updated", "timeCreated")]
        known = [t for t in times if t is not None]
        # The later of the two: when in doubt, younger.
        if isBlobKey(name) and known and max(known) <= limit:
            keys.append(name)
    token = document.get("nextPageToken")
    return keys, token if isinstance(token, str) and token else None


@implementer(
    IAbandonableBlobStore, IRedirectableBlobStore, IResumableBlobStore, ISweepableBlobStore
)
class GCSBlobStore(HTTPBlobStore):
    """
    Blobs in Google Cloud Storage bucket C{bucket}; C{endpoint} (for example
    a fake-gcs-server's C{"http://127.0.0.1:4443"}) selects an emulator,
    which is then spoken to without credentials unless
    C{GOOGLE_APPLICATION_CREDENTIALS} names a credentials file (a private
    endpoint of Google's, say): an emulator needs none, and looking for
    others would probe a metadata server that is not there.
    """

    name = "gcs"
    remote = True
    maxRedirectLifetime = MAX_SIGNED

    def __init__(
        self,
        bucket: str,
        reactor: Any,
        pool: ThreadPool,
        endpoint: str | None = None,
        agent: IAgent | None = None,
        credentials: Any = None,
        chunkSize: int = 32 * MiB,
        highWater: int | None = None,
        budget: MemoryBudget | None = None,
        askSessions: bool | None = None,
    ) -> None:
        if chunkSize <= 0 or chunkSize % CHUNK_UNIT:
            raise ValueError(f"GCS chunks are multiples of {CHUNK_UNIT} bytes")
        self.bucket = bucket
        self.chunkSize = chunkSize
        super().__init__(reactor, pool, agent, highWater, budget)
        self._base = (endpoint or GOOGLE).rstrip("/")
        self._bucketPath = quote(bucket, safe="")
        explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        #: Spoken to without credentials: an emulator, checking nothing.
        self.anonymous = credentials is None and endpoint is not None and not explicit
        if self.anonymous:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        self._credentials = credentials
        self._warned = False
        #: Whether a resumable write asks its session how much it holds
        #: before it goes on (see L{morpheo.blobstores._gcsresumable}): not
        #: an emulator, unless told to.
        self.askSessions = not self.anonymous if askSessions is None else askSessions
        #: What a resumable write's state names as its store: endpoint and bucket.
        self.identity = f"{self._base}/b/{self._bucketPath}"
        self._resumable = GCSResumable(self)

    def _objectURL(self, key: str) -> str:
        name = quote(key, safe="")
        return f"{self._base}/storage/v1/b/{self._bucketPath}/o/{name}"

    def _startSession(self, key: str, size: int | None, what: str) -> Deferred[str]:
        """A new resumable upload session for C{key}: fires with its URL."""
        url = f"{self._base}/upload/storage/v1/b/{self._bucketPath}/o"
        query = "uploadType=resumable&name=" + quote(key, safe="")
        headers = {} if size is None else {"X-Upload-Content-Length": str(size)}

        def started(response: IResponse) -> Deferred[str]:
            location = response.headers.getRawHeaders("location", [""])[0]
            if not location:
                raise BlobStoreError(f"{what} failed: no session in the response")
            return self._drained(response, location)

        d = self._call("POST", f"{url}?{query}", what, headers=headers, data=b"")
        return d.addCallback(started)

    async def _listNames(self, prefix: str) -> list[str]:
        """The names of every object under C{prefix}, page by page."""
        url = f"{self._base}/storage/v1/b/{self._bucketPath}/o"
        names: list[str] = []
        token: str | None = None
        while True:
            query = f"prefix={quote(prefix, safe='')}&fields=" + quote(
                "nextPageToken,items(name)", safe=""
            )
            if token is not None:
                query += f"&pageToken={quote(token, safe='')}"
            what = f"GCS listing {self.bucket}/{prefix}"
            body = await self._read(await self._call("GET", f"{url}?{query}", what), 16 * MiB)
            try:
                document = json.loads(body)
                items = document.get("items") or []
                names += [i["name"] for i in items if str(i.get("name", "")).startswith(prefix)]
                token = document.get("nextPageToken") or None
            except (ValueError, AttributeError, TypeError, KeyError) as e:
                raise BlobStoreError(f"{what} gave no listing: {e}") from None
            if token is None:
                return names

    def _cancelSession(self, key: str, session: str) -> Deferred[None]:
        # Cancelling a session answers 499; a session already gone, 404/410.
        what = f"GCS cancelling the upload of {key}"
        d = self._call("DELETE", session, what, ok=(200, 204, 404, 410, 499))
        return d.addCallback(self._drained)

    def ownSession(self, key: str, url: str) -> bool:
        """
        Whether C{url} is a resumable session of this store's bucket, on its
        own endpoint, for C{key}: the only URLs read back from the database
        that it sends a request (and its credentials) to.
        """
        if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
            return False
        try:
            own, given = urlsplit(self._base), urlsplit(url)
            ownPort, givenPort = own.port, given.port
        except ValueError:
            return False
        scheme = own.scheme.lower()
        query = parse_qs(given.query)
        return (
            given.scheme.lower() == scheme
            and given.username is None
            and given.password is None
            and given.hostname is not None
            and given.hostname == own.hostname
            and (givenPort or _DEFAULT_PORTS.get(scheme)) == (ownPort or _DEFAULT_PORTS.get(scheme))
            and given.path == f"{own.path}/upload/storage/v1/b/{self._bucketPath}/o"
            and not given.fragment
            and len(query.get("upload_id", [])) == 1
            and query.get("name", [key]) == [key]
        )

    def _credentialsInThread(self) -> Any:
        """The credentials, found the first time (files, the metadata server)."""
        import google.auth

        if self._credentials is None:
            self._credentials, _ = google.auth.default(scopes=[SCOPE])
        return self._credentials

    def _authorizeInThread(self, headers: dict[str, str]) -> dict[str, str]:
        import google.auth.transport.urllib3
        import urllib3

        credentials = self._credentialsInThread()
        if not credentials.valid:
            http = google.auth.transport.urllib3.Request(urllib3.PoolManager())
            credentials.refresh(http)
        credentials.apply(headers)
        return headers

    def _signInThread(
        self, key: str, lifetime: int, contentType: str, disposition: str, now: float
    ) -> str:
        from google.auth.credentials import Signing

        credentials = self._credentialsInThread()
        if not isinstance(credentials, Signing):
            raise BlobStoreError(
                f"these Google credentials ({type(credentials).__module__}) cannot sign URLs:"
                " use a service account's key (GOOGLE_APPLICATION_CREDENTIALS) or credentials"
                " impersonating a service account"
                " (gcloud auth application-default login --impersonate-service-account)"
            )
        # The response-* parameters are signed: a client cannot make the
        # store answer with another type or file name.
        query = {"response-content-type": contentType, "response-content-disposition": disposition}
        path = f"/{self._bucketPath}/{quote(key, safe='/~')}"
        return signedURL(
            credentials.sign_bytes, credentials.signer_email, self._base, path, query, lifetime, now
        )

    def _authorize(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> Deferred[dict[str, str]]:
        creds = self._credentials
        if creds is not None and creds.valid:
            # Cheap and non-blocking: no thread hop for every chunk.
            creds.apply(headers)
            return succeed(headers)
        return deferToThreadPool(self._reactor, self._pool, self._authorizeInThread, headers)

    def _explain(self, body: bytes, code: int, key: str | None) -> str:
        if code == 404 and key is not None:
            raise BlobNotFound(key)
        message = body[:300].decode("utf-8", "replace").strip()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        return str(message)

    # IBlobStore

    def writer(self, key: str, size: int | None) -> _GCSWriter:
        return _GCSWriter(self, key, size)

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        url, what = self._objectURL(key), f"GCS download of {key}"

        def probe() -> Deferred[IResponse]:
            return self._call("GET", url, what, key=key)

        return self._download(key, consumer, offset, length, url + "?alt=media", what, probe)

    def stat(self, key: str) -> Deferred[int]:
        """
        The object's metadata, though the bucket is every node's: a HEAD is
        asked because a GET may follow, and a GET fails when the object is
        gone behind the service's back (a lifecycle rule, a hand), when
        this node was given another bucket or endpoint than the one its
        rows were written through, or when the store is down.  One small
        request, as the GET's own first one.
        """
        url, what = self._objectURL(key), f"GCS reading the metadata of {key}"

        def size(body: bytes) -> int:
            try:
                return int(json.loads(body)["size"])
            except (ValueError, KeyError, TypeError):
                raise BlobStoreError(f"{what}: no size in the answer") from None

        d = self._call("GET", url, what, key=key)
        return d.addCallback(self._read).addCallback(size)

    # IRedirectableBlobStore

    def presignedURL(
        self, key: str, lifetime: int, contentType: str, disposition: str
    ) -> Deferred[str]:
        """
        A V4 signed URL; from an emulator spoken to anonymously, which
        checks no signature, the object's plain media URL instead (it never
        expires, and the emulator answers with the object's stored type).
        """
        if not 0 < lifetime <= MAX_SIGNED:
            raise ValueError(f"GCS signed URLs live 1 to {MAX_SIGNED} seconds, not {lifetime}")
        if self.anonymous:
            if not self._warned:
                self._warned = True
                _log.warn(
                    "downloads are redirected to {base} unsigned, as an emulator checks no"
                    " signature: whoever holds such a URL can read the blob, and it never expires",
                    base=self._base,
                )
            name = quote(key, safe="")
            return succeed(
                f"{self._base}/download/storage/v1/b/{self._bucketPath}/o/{name}?alt=media"
            )
        now = self._clock.seconds()
        d: Deferred[str] = deferToThreadPool(
            self._reactor,
            self._pool,
            self._signInThread,
            key,
            lifetime,
            contentType,
            disposition,
            now,
        )
        return d.addErrback(lambda reason: asStoreError(f"GCS signing a URL for {key}", reason))

    def delete(self, key: str) -> Deferred[None]:
        what = f"GCS deleting {key}"
        d = self._call("DELETE", self._objectURL(key), what, ok=(200, 204, 404))
        return d.addCallback(self._drained)

    def abandon(self, key: str, handle: str | None = None) -> Deferred[None]:
        """
        The resumable session C{handle} names, cancelled (a process killed
        mid-upload cannot cancel its own, and nothing but its URL finds
        it), then the object under C{key} if it was committed.  A handle
        that is not a session of this store's (L{ownSession}) is not called:
        it is data from the database.
        """

        async def run() -> None:
            if handle is not None:
                if self.ownSession(key, handle):
                    await self._cancelSession(key, handle)
                else:
                    _log.warn(
                        "not cancelling the upload session recorded for {key}: it is not"
                        " one of bucket {bucket} at {endpoint} (the session expires by"
                        " itself within a week)",
                        key=key,
                        bucket=self.bucket,
                        endpoint=self._base,
                    )
            await self.delete(key)

        return Deferred.fromCoroutine(run())

    def check(self) -> Deferred[None]:
        what = f"GCS reading bucket {self.bucket}"
        url = f"{self._base}/storage/v1/b/{self._bucketPath}"
        return self._call("GET", url, what).addCallback(self._drained)

    # IResumableBlobStore (in L{morpheo.blobstores._gcsresumable})

    def begin(self, key: str, size: int | None) -> Deferred[str]:
        """A resumable upload session, told the size if it is known."""
        return self._resumable.begin(key, size)

    def append(
        self, key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> IAppender:
        """Chunks pushed into the session after the staged pieces, a tail
        under 256 KiB staged; a C{revocable} request's bytes all staged."""
        return self._resumable.append(key, state, offset, end, revocable)

    def conclude(self, key: str, state: str, size: int) -> Deferred[None]:
        return self._resumable.conclude(key, state, size)

    def cancel(self, key: str, state: str) -> Deferred[None]:
        return self._resumable.cancel(key, state)

    # ISweepableBlobStore

    def sweepTemporary(self, olderThan: float = 0.0) -> Deferred[list[str]]:
        """
        Nothing: an unfinished resumable upload is no object, and Google
        forgets it after a week.
        """
        return succeed([])

    async def listKeys(
        self, olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        """The objects under each kind's prefix, C{pageSize} a request, by page token."""
        limit = self._clock.seconds() - olderThan
        url = f"{self._base}/storage/v1/b/{self._bucketPath}/o"
        for kind in KINDS:
            token: str | None = None
            while True:
                query = (
                    f"prefix={quote(kind + '/', safe='')}&maxResults={pageSize}"
                    "&fields=" + quote("nextPageToken,items(name,updated,timeCreated)", safe="")
                )
                if token is not None:
                    query += f"&pageToken={quote(token, safe='')}"
                what = f"GCS listing {self.bucket}/{kind}/"
                response = await self._call("GET", f"{url}?{query}", what)
                body = await self._read(response, 16 * MiB)
                try:
                    page, token = parseListing(body, limit)
                except (ValueError, AttributeError, TypeError) as e:
                    raise BlobStoreError(f"{what} gave no listing: {e}") from None
                if page:
                    yield page
                if token is None:
                    break
