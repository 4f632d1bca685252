# -*- test-case-name: tests.unit.test_unknown_sizes,tests.integration.test_blobstore_contract -*-
"""
Blobs as objects in an S3 bucket (AWS or any S3-compatible store).

Requests are signed by botocore's SigV4 signer (streamed bodies as
C{UNSIGNED-PAYLOAD}) in the thread pool, where botocore may also refresh
credentials, and sent with a Twisted L{IAgent}, bodies streamed straight
from the writer.  Up to C{partThreshold} bytes a blob is one PUT; above, a
multipart upload whose parts are streamed in order, the next part starting
as soon as the previous one's body is written.  A blob whose size is known
only at its end is a multipart upload of C{partSize} parts, each buffered
until it is whole, the last one smaller; or, if it ends within its first
part, one PUT.

Downloads can also be handed to the client as presigned URLs (botocore's
query-string signer, in the thread pool too).
as soon as the previous one's body is written.  The sweep lists the
service's keys a page (ListObjectsV2) at a time, kind by kind.
A blob written over many requests (L{begin}, L{append}) is one multipart
upload too: see L{morpheo.blobstores._s3resumable}.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.session import get_session
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from .._errors import BlobNotFound, BlobStoreError
from .._interfaces import (
    KEY_PAGE,
    IAbandonableBlobStore,
    IRedirectableBlobStore,
    IResumableBlobStore,
    ISweepableBlobStore,
)
from .._kinds import KINDS, isBlobKey
from ._bodies import StreamBody
from ._flow import MemoryBudget
from ._http import asStoreError
from ._httpstore import HTTPBlobStore, parseTime
from ._s3resumable import S3Appender, S3Resumable
from ._segmented import StreamingWriter

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: The longest a presigned URL may live: SigV4's own limit, 7 days.
MAX_PRESIGN = 7 * 24 * 3600

# Streamed bodies cannot be hashed before they are sent: botocore's own
# switch for S3 then signs them as UNSIGNED-PAYLOAD.
_UNSIGNED = Config(s3={"payload_signing_enabled": False})


def partSize(size: int, preferred: int) -> int:
    """
    The part length for a blob of C{size} bytes: C{preferred} unless that
    needs more than 10,000 parts, then the smallest whole number of MiB that
    fits; never under S3's 5 MiB minimum.
    """
    needed = math.ceil(size / MAX_PARTS / MiB) * MiB
    return max(MIN_PART, preferred, needed)


_HEAD_ERRORS = {
    301: "the bucket is in another region (--s3-region)",
    400: "bad request (is --s3-region right?)",
    403: "access denied: check the credentials and what they are allowed",
    404: "no such bucket",
}


def _findText(root: ElementTree.Element, name: str) -> str | None:
    for element in root.iter():
        if element.tag in (name, _NS + name):
            return element.text
    return None


class _S3Writer(StreamingWriter[str]):
    """
    One PUT, or a multipart upload when the blob is over the threshold (or,
    of unknown size, longer than one part).  It gives no handle
    (L{StreamingWriter._handle}): what a killed process left is found by
    listing the multipart uploads to its key.
    """

    def __init__(self, store: S3BlobStore, key: str, size: int | None) -> None:
        self._store = store
        #: Decided at the start for a known size, at the first part otherwise.
        self._multipart: bool | None = None
        if size is not None:
            self._multipart = size > store.partThreshold
            self._partSize = partSize(size, store.partSize)
        else:
            self._partSize = store.partSize
            self.maximum = MAX_PARTS * store.partSize
        self._uploadId: str | None = None
        self.pipelined = bool(self._multipart)
        super().__init__(
            key,
            size,
            store._reactor,
            store._pool,
            store.highWater,
            step=self._partSize,
            share=store.budget.join(),
        )

    def _segments(self) -> list[tuple[int, int]]:
        assert self.size is not None
        if not self._multipart:
            return [(0, self.size)]
        step = self._partSize
        return [(o, min(step, self.size - o)) for o in range(0, self.size, step)]

    def _begin(self) -> Deferred[None]:
        if self._multipart is None:
            # Of unknown size: the first part is whole, or the blob ended in it.
            self._multipart = not (self._planned and len(self._segmentList) == 1)
            self.pipelined = self._multipart
        if not self._multipart:
            return succeed(None)

        def started(body: bytes) -> None:
            uploadId = _findText(ElementTree.fromstring(body), "UploadId")
            if not uploadId:
                raise BlobStoreError(f"S3 gave no UploadId for {self.key}")
            self._uploadId = uploadId

        what = f"S3 CreateMultipartUpload of {self.key}"
        d = self._store._request("POST", self.key, what, query="uploads")
        return d.addCallback(self._store._read).addCallback(started)

    def _sendSegment(self, index: int, offset: int, length: int, body: StreamBody) -> Deferred[str]:
        if not self._multipart:
            what = f"S3 PutObject of {self.key}"
            d = self._store._request("PUT", self.key, what, body=body)
            return d.addCallback(self._store._drained, "")
        assert self._uploadId is not None
        return self._store._uploadPart(self.key, self._uploadId, index + 1, body)

    def _commit(self, etags: list[str]) -> Deferred[None]:
        if not self._multipart:
            return succeed(None)
        assert self._uploadId is not None
        return self._store._complete(self.key, self._uploadId, etags)

    def _cleanup(self, committed: bool) -> Deferred[None]:
        if committed:
            return self._store.delete(self.key)
        if self._uploadId is None:
            return succeed(None)
        return self._store._abortUpload(self.key, self._uploadId)


def _xmlEscape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def parseListing(body: bytes, limit: float) -> tuple[list[str], str | None]:
    """
    The service's keys in one ListObjectsV2 answer modified by C{limit}
    (the time), and the token of the next page, if any.
    """
    root = ElementTree.fromstring(body)
    keys = []
    for element in root.iter():
        if element.tag in ("Contents", _NS + "Contents"):
            key = _findText(element, "Key") or ""
            modified = parseTime(_findText(element, "LastModified"))
            if isBlobKey(key) and modified is not None and modified <= limit:
                keys.append(key)
    truncated = (_findText(root, "IsTruncated") or "").strip().lower() == "true"
    token = _findText(root, "NextContinuationToken") if truncated else None
    return keys, token or None


@implementer(
    IAbandonableBlobStore, IRedirectableBlobStore, IResumableBlobStore, ISweepableBlobStore
)
class S3BlobStore(HTTPBlobStore):
    """
    Blobs in S3 bucket C{bucket} of C{region}; C{endpoint} (for example
    C{"http://127.0.0.1:8333"}) selects an S3-compatible store, addressed
    path-style.  Credentials come from botocore's standard chain unless
    C{credentials} is given.
    """

    name = "s3"
    remote = True
    maxRedirectLifetime = MAX_PRESIGN

    def __init__(
        self,
        bucket: str,
        region: str,
        reactor: Any,
        pool: ThreadPool,
        endpoint: str | None = None,
        agent: IAgent | None = None,
        credentials: Credentials | None = None,
        partThreshold: int = 64 * MiB,
        partSize: int = 16 * MiB,
        highWater: int | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        if partSize < MIN_PART:
            raise ValueError(f"S3 parts are at least {MIN_PART} bytes")
        self.bucket = bucket
        self.region = region
        self.partThreshold = partThreshold
        self.partSize = partSize
        super().__init__(reactor, pool, agent, highWater, budget)
        if endpoint is not None:
            self._base = f"{endpoint.rstrip('/')}/{quote(bucket, safe='')}"
        elif "." in bucket:
            self._base = f"https://s3.{region}.amazonaws.com/{quote(bucket, safe='')}"
        else:
            self._base = f"https://{bucket}.s3.{region}.amazonaws.com"
        self.endpoint = self._base
        self._credentials = credentials
        self._resumable = S3Resumable(self)

    # Requests

    def _url(self, key: str | None, query: str | None) -> str:
        url = self._base + ("/" if key is None else "/" + quote(key, safe="/~"))
        return url if query is None else f"{url}?{query}"

    def _frozenCredentials(self) -> ReadOnlyCredentials:
        """The credentials to sign with now, found (and refreshed) by
        botocore: in a thread, it may read files or ask the network."""
        if self._credentials is None:
            self._credentials = get_session().get_credentials()
            if self._credentials is None:
                raise BlobStoreError(
                    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
                    " or AWS_PROFILE, or write ~/.aws/credentials, or run with an instance role"
                )
        frozen: ReadOnlyCredentials = self._credentials.get_frozen_credentials()
        return frozen

    def _signInThread(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> dict[str, str]:
        frozen = self._frozenCredentials()
        request = AWSRequest(method=method, url=url, headers=headers, data=data or b"")
        if data is None:
            request.context["client_config"] = _UNSIGNED
        S3SigV4Auth(frozen, "s3", self.region).add_auth(request)
        return dict(request.headers.items())

    def _presignInThread(self, key: str, lifetime: int, contentType: str, disposition: str) -> str:
        # The response-* parameters are part of the signed query: a client
        # cannot make the store answer with another type or file name.
        params = {"response-content-type": contentType, "response-content-disposition": disposition}
        request = AWSRequest(method="GET", url=self._url(key, None), params=params)
        S3SigV4QueryAuth(self._frozenCredentials(), "s3", self.region, lifetime).add_auth(request)
        url: str = request.url
        return url

    def _authorize(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> Deferred[dict[str, str]]:
        return deferToThreadPool(
            self._reactor, self._pool, self._signInThread, method, url, headers, data
        )

    def _request(
        self,
        method: str,
        key: str | None,
        what: str,
        query: str | None = None,
        body: IBodyProducer | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 204, 206),
    ) -> Deferred[IResponse]:
        """One request about C{key} (the bucket, if None); NoSuchKey is
        L{BlobNotFound}."""
        url = self._url(key, query)
        return self._call(method, url, what, headers, body, data, ok, key)

    def _explain(self, body: bytes, code: int, key: str | None) -> str:
        s3code = message = None
        try:
            root = ElementTree.fromstring(body)
            s3code, message = _findText(root, "Code"), _findText(root, "Message")
        except ElementTree.ParseError:
            pass
        if code == 404 and s3code in ("NoSuchKey", None) and key is not None:
            raise BlobNotFound(key)
        if s3code:
            return f"{s3code}: {message}"
        if body.strip():
            return body[:200].decode("utf-8", "replace")
        # HEAD answers have no body to say why.
        return _HEAD_ERRORS.get(code, "")

    # IBlobStore

    def writer(self, key: str, size: int | None) -> _S3Writer:
        return _S3Writer(self, key, size)

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        url, what = self._url(key, None), f"S3 GetObject of {key}"

        def probe() -> Deferred[IResponse]:
            return self._request("HEAD", key, f"S3 HeadObject of {key}")

        return self._download(key, consumer, offset, length, url, what, probe)

    def stat(self, key: str) -> Deferred[int]:
        """
        A HeadObject, though the bucket is every node's: a HEAD is asked
        because a GET may follow, and a GET fails when the object is gone
        behind the service's back (a lifecycle rule, a hand), when this
        node was given another bucket or endpoint than the one its rows
        were written through, or when the store is down.  One small
        request, as the GET's own first one.
        """

        def size(response: IResponse) -> Deferred[int]:
            # A HEAD's Content-Length stays among the headers (no body follows).
            values = response.headers.getRawHeaders(b"content-length") or [b""]
            length = values[0].strip()
            if not length.isdigit():
                raise BlobStoreError(f"S3 HeadObject of {key} gave no Content-Length")
            return self._drained(response, int(length))

        return self._request("HEAD", key, f"S3 HeadObject of {key}").addCallback(size)

    def delete(self, key: str) -> Deferred[None]:
        d = self._request("DELETE", key, f"S3 DeleteObject of {key}", ok=(200, 204, 404))
        return d.addCallback(self._drained)

    # IRedirectableBlobStore

    def presignedURL(
        self, key: str, lifetime: int, contentType: str, disposition: str
    ) -> Deferred[str]:
        """A SigV4 presigned GetObject URL: no request is made to sign it."""
        if not 0 < lifetime <= MAX_PRESIGN:
            raise ValueError(f"S3 presigned URLs live 1 to {MAX_PRESIGN} seconds, not {lifetime}")
        d: Deferred[str] = deferToThreadPool(
            self._reactor,
            self._pool,
            self._presignInThread,
            key,
            lifetime,
            contentType,
            disposition,
        )
        return d.addErrback(
            lambda reason: asStoreError(f"S3 presigning a GetObject of {key}", reason)
        )

    def check(self) -> Deferred[None]:
        what = f"S3 HeadBucket of {self.bucket} at {self._base.rsplit('/', 1)[0]}"
        if self._base.endswith(".amazonaws.com"):
            what = f"S3 HeadBucket of {self.bucket} in {self.region}"
        return self._request("HEAD", None, what).addCallback(self._drained)

    def abandon(self, key: str, handle: str | None = None) -> Deferred[None]:
        """
        The object under C{key} and every multipart upload to it: a process
        killed mid-upload cannot abort its own, and S3 keeps its parts (and
        bills them) until someone does.  They are listed by their key, so
        writers give no handle (C{handle} is not used).
        """

        async def run() -> None:
            await self.delete(key)
            for uploadKey, uploadId in await self.listUploads(key):
                if uploadKey == key:
                    await self._abortUpload(key, uploadId)

        return Deferred.fromCoroutine(run())

    def _uploadPart(self, key: str, uploadId: str, number: int, body: StreamBody) -> Deferred[str]:
        """UploadPart C{number} of C{key}'s upload, streamed from C{body}; fires with its ETag."""
        query = f"partNumber={number}&uploadId={quote(uploadId, safe='')}"
        what = f"S3 UploadPart {number} of {key}"

        def etag(response: IResponse) -> Deferred[str]:
            value = response.headers.getRawHeaders("etag", [""])[0]
            if not value:
                raise BlobStoreError(f"{what} gave no ETag")
            return self._drained(response, value)

        return self._request("PUT", key, what, query=query, body=body).addCallback(etag)

    def _complete(self, key: str, uploadId: str, etags: list[str]) -> Deferred[None]:
        """CompleteMultipartUpload of parts 1 to len(C{etags})."""
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xmlEscape(e)}</ETag></Part>"
            for n, e in enumerate(etags, 1)
        )
        xml = f'<CompleteMultipartUpload xmlns="{_NS[1:-1]}">{parts}</CompleteMultipartUpload>'
        what = f"S3 CompleteMultipartUpload of {key}"

        def check(body: bytes) -> None:
            # S3 may answer 200 and still fail, with an <Error> in the body.
            root = ElementTree.fromstring(body)
            if root.tag in ("Error", _NS + "Error"):
                raise BlobStoreError(
                    f"{what} failed: {_findText(root, 'Code')}: {_findText(root, 'Message')}"
                )

        query = f"uploadId={quote(uploadId, safe='')}"
        d = self._request("POST", key, what, query=query, data=xml.encode())
        return d.addCallback(self._read).addCallback(check)

    def _abortUpload(self, key: str, uploadId: str) -> Deferred[None]:
        what = f"S3 AbortMultipartUpload of {key}"
        query = f"uploadId={quote(uploadId, safe='')}"
        d = self._request("DELETE", key, what, query=query, ok=(200, 204, 404))
        return d.addCallback(self._drained)

    def listUploads(self, prefix: str = "") -> Deferred[list[tuple[str, str]]]:
        """
        The multipart uploads in progress under C{prefix} as (key, upload
        id): what an interrupted process may leave behind.
        """
        query = "prefix=" + quote(prefix, safe="") + "&uploads="

        def parse(body: bytes) -> list[tuple[str, str]]:
            root = ElementTree.fromstring(body)
            uploads = []
            for element in root.iter():
                if element.tag in ("Upload", _NS + "Upload"):
                    key = _findText(element, "Key") or ""
                    uploads.append((key, _findText(element, "UploadId") or ""))
            return uploads

        d = self._request("GET", None, f"S3 ListMultipartUploads of {self.bucket}", query=query)
        return d.addCallback(self._read, 16 * MiB).addCallback(parse)

    # IResumableBlobStore (in L{morpheo.blobstores._s3resumable})

    def begin(self, key: str, size: int | None) -> Deferred[str]:
        """A multipart upload, its part length fixed for the blob's size."""
        return self._resumable.begin(key, size)

    def append(
        self, key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> S3Appender:
        """Parts streamed as their bytes come, a shorter tail staged at the
        close; every append can be dropped (C{revocable} changes nothing)."""
        return self._resumable.append(key, state, offset, end, revocable)

    def conclude(self, key: str, state: str, size: int) -> Deferred[None]:
        return self._resumable.conclude(key, state, size)

    def cancel(self, key: str, state: str) -> Deferred[None]:
        return self._resumable.cancel(key, state)

    # ISweepableBlobStore

    def sweepTemporary(self, olderThan: float = 0.0) -> Deferred[list[str]]:
        """
        Nothing, by age: a multipart upload keeps the time it was started
        however long it runs, so its age does not tell a dead one from a
        slow one.  A dead upload's are aborted with its claim (L{abandon}).
        """
        return succeed([])

    async def listKeys(
        self, olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        """
        ListObjectsV2 under each kind's prefix, C{pageSize} objects a
        request, continued with its continuation token.
        """
        limit = self._clock.seconds() - olderThan
        for kind in KINDS:
            token: str | None = None
            while True:
                query = f"list-type=2&max-keys={pageSize}&prefix={quote(kind + '/', safe='')}"
                if token is not None:
                    query += f"&continuation-token={quote(token, safe='')}"
                what = f"S3 ListObjectsV2 of {self.bucket}/{kind}/"
                response = await self._request("GET", None, what, query=query)
                body = await self._read(response, 16 * MiB)
                try:
                    page, token = parseListing(body, limit)
                except ElementTree.ParseError as e:
                    raise BlobStoreError(f"{what} gave no listing: {e}") from None
                if page:
                    yield page
                if token is None:
                    break
