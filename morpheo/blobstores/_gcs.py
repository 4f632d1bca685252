# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Blobs as objects in a Google Cloud Storage bucket, through the JSON API.

Uploads are resumable uploads whose chunks (multiples of 256 KiB) are each
one PUT whose body streams straight from the writer: the blob's size is
known, so every chunk's length and C{Content-Range} are known before its
first byte and nothing is buffered.  The object exists only once the last
chunk is accepted, and its last byte waits for C{finish()}.

Credentials come from google-auth's Application Default Credentials,
looked up and refreshed in the thread pool (both may block on files or the
network); with another endpoint (an emulator) requests are anonymous unless
C{GOOGLE_APPLICATION_CREDENTIALS} names a credentials file.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from .._interfaces import IBlobStore
from .._types import BlobNotFound, BlobStoreError
from ._remote import (
    BytesBody,
    EmptyProducer,
    StreamBody,
    StreamingWriter,
    asStoreError,
    makeAgent,
    readSmall,
    streamResponse,
)

MiB = 1024 * 1024
CHUNK_UNIT = 256 * 1024
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
GOOGLE = "https://storage.googleapis.com"


class _GCSWriter(StreamingWriter[None]):
    """A resumable upload session, its chunks sent one after the other."""

    def __init__(self, store: GCSBlobStore, key: str, size: int) -> None:
        self._store = store
        self._session: str | None = None
        super().__init__(key, size, store._reactor, store._pool, store.highWater)

    def _segments(self) -> list[tuple[int, int]]:
        if self.size == 0:
            return [(0, 0)]
        step = self._store.chunkSize
        return [(o, min(step, self.size - o)) for o in range(0, self.size, step)]

    def _begin(self) -> Deferred[None]:
        what = f"GCS starting the upload of {self.key}"
        url = f"{self._store._base}/upload/storage/v1/b/{self._store._bucketPath}/o"
        query = "uploadType=resumable&name=" + quote(self.key, safe="")
        headers = {"X-Upload-Content-Length": str(self.size)}

        def started(response: IResponse) -> Deferred[None]:
            location = response.headers.getRawHeaders("location", [""])[0]
            if not location:
                raise BlobStoreError(f"{what} failed: no session in the response")
            self._session = location
            return readSmall(response).addCallback(lambda _: None)

        d = self._store._call("POST", f"{url}?{query}", what, headers=headers, data=b"")
        return d.addCallback(started)

    def _sendSegment(
        self, index: int, offset: int, length: int, body: StreamBody
    ) -> Deferred[None]:
        assert self._session is not None
        what = f"GCS upload of {self.key} (bytes {offset}-{offset + length - 1})"
        if length:
            contentRange = f"bytes {offset}-{offset + length - 1}/{self.size}"
        else:
            contentRange = f"bytes */{self.size}"
        last = offset + length == self.size
        ok = (200, 201) if last else (308,)

        def accepted(response: IResponse) -> Deferred[None]:
            if not last:
                # The session must hold everything sent so far, or the next
                # chunk would leave a hole we no longer have the bytes for.
                got = response.headers.getRawHeaders("range", [""])[0]
                if got != f"bytes=0-{offset + length - 1}":
                    raise BlobStoreError(f"{what}: GCS kept only {got or 'nothing'}")
            return readSmall(response).addCallback(lambda _: None)

        d = self._store._call(
            "PUT",
            self._session,
            what,
            headers={"Content-Range": contentRange},
            body=body,
            ok=ok,
        )
        return d.addCallback(accepted)

    def _cleanup(self, begun: bool, committed: bool) -> Deferred[None]:
        if committed:
            return self._store.delete(self.key)
        if self._session is None:
            return succeed(None)
        # Cancelling a session answers 499; a session already gone, 404/410.
        what = f"GCS cancelling the upload of {self.key}"
        d = self._store._call("DELETE", self._session, what, ok=(200, 204, 404, 410, 499))
        return d.addCallback(readSmall).addCallback(lambda _: None)


@implementer(IBlobStore)
class GCSBlobStore:
    """
    Blobs in Google Cloud Storage bucket C{bucket}; C{endpoint} (for example
    a fake-gcs-server's C{"http://127.0.0.1:4443"}) selects an emulator,
    which is then spoken to without credentials unless
    C{GOOGLE_APPLICATION_CREDENTIALS} names a credentials file (a private
    endpoint of Google's, say): an emulator needs none, and looking for
    others would probe a metadata server that is not there.
    """

    name = "gcs"

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
    ) -> None:
        if chunkSize <= 0 or chunkSize % CHUNK_UNIT:
            raise ValueError(f"GCS chunks are multiples of {CHUNK_UNIT} bytes")
        self.bucket = bucket
        self.chunkSize = chunkSize
        self.highWater = highWater
        self._reactor: IReactorFromThreads = reactor
        self._pool = pool
        self._base = (endpoint or GOOGLE).rstrip("/")
        self._bucketPath = quote(bucket, safe="")
        explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if credentials is None and endpoint is not None and not explicit:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        self._credentials = credentials
        self._agent = agent or makeAgent(reactor)

    def _objectURL(self, key: str) -> str:
        name = quote(key, safe="")
        return f"{self._base}/storage/v1/b/{self._bucketPath}/o/{name}"

    def _authorizeInThread(self, headers: dict[str, str]) -> dict[str, str]:
        import google.auth
        import google.auth.transport.urllib3
        import urllib3

        if self._credentials is None:
            self._credentials, _ = google.auth.default(scopes=[SCOPE])
        if not self._credentials.valid:
            http = google.auth.transport.urllib3.Request(urllib3.PoolManager())
            self._credentials.refresh(http)
        self._credentials.apply(headers)
        return headers

    def _authorize(self, headers: dict[str, str]) -> Deferred[dict[str, str]]:
        creds = self._credentials
        if creds is not None and creds.valid:
            # Cheap and non-blocking: no thread hop for every chunk.
            creds.apply(headers)
            return succeed(headers)
        return deferToThreadPool(self._reactor, self._pool, self._authorizeInThread, headers)

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: IBodyProducer | None = None,
        data: bytes | None = None,
        ok: tuple[int, ...] = (200, 204, 206),
        key: str | None = None,
    ) -> Deferred[IResponse]:
        """
        Authorize and send one request; fires with the response if its
        status is in C{ok}, else fails with a L{BlobStoreError} saying
        C{what} failed (L{BlobNotFound} on a 404 about C{key}).
        """

        def send(authorized: dict[str, str]) -> Deferred[IResponse]:
            producer = body
            if producer is None and data is not None:
                producer = BytesBody(data)
            raw = Headers({k.encode(): [v.encode()] for k, v in authorized.items()})
            return self._agent.request(method.encode(), url.encode(), raw, producer)

        def check(response: IResponse) -> IResponse | Deferred[IResponse]:
            if response.code in ok:
                return response
            return readSmall(response).addCallback(self._error, response.code, what, key)

        d: Deferred[IResponse]
        d = self._authorize(dict(headers or {})).addCallback(send).addCallback(check)

        def failed(reason: Failure) -> Failure:
            return asStoreError(what, reason)

        return d.addErrback(failed)

    def _error(self, body: bytes, code: int, what: str, key: str | None) -> IResponse:
        if code == 404 and key is not None:
            raise BlobNotFound(key)
        message = body[:300].decode("utf-8", "replace").strip()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise BlobStoreError(f"{what} failed: HTTP {code} {message}".rstrip())

    # IBlobStore

    def writer(self, key: str, size: int) -> _GCSWriter:
        return _GCSWriter(self, key, size)

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        what = f"GCS download of {key}"
        if length == 0:
            d = self._call("GET", self._objectURL(key), what, key=key)
            d.addCallback(readSmall)
            return d.addCallback(lambda _: EmptyProducer().produceNothing(consumer))
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        url = self._objectURL(key) + "?alt=media"
        d = self._call("GET", url, what, headers=headers, key=key)
        return d.addCallback(streamResponse, consumer, what, length)

    def delete(self, key: str) -> Deferred[None]:
        what = f"GCS deleting {key}"
        d = self._call("DELETE", self._objectURL(key), what, ok=(200, 204, 404))
        return d.addCallback(readSmall).addCallback(lambda _: None)

    def check(self) -> Deferred[None]:
        what = f"GCS reading bucket {self.bucket}"
        url = f"{self._base}/storage/v1/b/{self._bucketPath}"
        d = self._call("GET", url, what)
        return d.addCallback(readSmall).addCallback(lambda _: None)
