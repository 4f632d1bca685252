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

The sweep lists the service's objects a page (C{objects.list}) at a time,
kind by kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from .._errors import BlobNotFound, BlobStoreError
from .._interfaces import KEY_PAGE, ISweepableBlobStore
from .._kinds import KINDS, isBlobKey
from ._bodies import StreamBody
from ._httpstore import HTTPBlobStore, parseTime
from ._segmented import StreamingWriter

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
            return self._store._drained(response)

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
        # Cancelling a session answers 499; a session already gone, 404/410.
        what = f"GCS cancelling the upload of {self.key}"
        d = self._store._call("DELETE", self._session, what, ok=(200, 204, 404, 410, 499))
        return d.addCallback(self._store._drained)


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


@implementer(ISweepableBlobStore)
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
        super().__init__(reactor, pool, agent, highWater)
        self._base = (endpoint or GOOGLE).rstrip("/")
        self._bucketPath = quote(bucket, safe="")
        explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if credentials is None and endpoint is not None and not explicit:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        self._credentials = credentials

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

    def writer(self, key: str, size: int) -> _GCSWriter:
        return _GCSWriter(self, key, size)

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        url, what = self._objectURL(key), f"GCS download of {key}"

        def probe() -> Deferred[IResponse]:
            return self._call("GET", url, what, key=key)

        return self._download(key, consumer, offset, length, url + "?alt=media", what, probe)

    def delete(self, key: str) -> Deferred[None]:
        what = f"GCS deleting {key}"
        d = self._call("DELETE", self._objectURL(key), what, ok=(200, 204, 404))
        return d.addCallback(self._drained)

    def check(self) -> Deferred[None]:
        what = f"GCS reading bucket {self.bucket}"
        url = f"{self._base}/storage/v1/b/{self._bucketPath}"
        return self._call("GET", url, what).addCallback(self._drained)

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
