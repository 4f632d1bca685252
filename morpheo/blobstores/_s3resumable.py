# -*- test-case-name: tests.integration.test_resumable_contract -*-
"""
Resumable writes to S3 (L{morpheo._interfaces.IResumableBlobStore}): one
multipart upload over many requests.

Its state records the upload id, its part length (fixed at L{begin}, so
that the largest blob fits in S3's 10,000 parts), the parts sent (ETag and
length; part I{n} is the I{n}th) and the staged tail, if any: what a
request left that is shorter than a part, put as an object of its own
(L{morpheo.blobstores._resumable.stagedName}) and streamed back ahead of
the next request's bytes.  A part sent again under the same number
replaces the one before, so a request's bytes are dropped by handing back
the state from before: the parts it sent are not listed, and
CompleteMultipartUpload leaves out what is not listed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.etree import ElementTree

from twisted.internet.defer import Deferred
from twisted.web.iweb import IResponse

from .._errors import BlobStoreError, SizeMismatch
from .._types import Appended
from ._bodies import StreamBody
from ._resumable import (
    ForeignState,
    UnitAppender,
    concludedBefore,
    deleteQuietly,
    dumpState,
    loadState,
    stagedName,
    stagedPrefix,
)

if TYPE_CHECKING:
    from ._s3 import S3BlobStore

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

#: The part length of a resumable write of known size, unless 10,000 of
#: them would not hold it: each request being received holds one part,
#: and shorter parts keep a node with many uploads small.
RESUMABLE_PART = 8 * 1024 * 1024


def _parts(state: dict[str, Any]) -> list[tuple[str, int]]:
    parts = state.get("parts")
    if not isinstance(parts, list) or not all(
        isinstance(p, list)
        and len(p) == 2
        and isinstance(p[0], str)
        and isinstance(p[1], int)
        and p[1] >= 0
        for p in parts
    ):
        raise ForeignState(f"the state of the write to {state.get('key')} has no parts list")
    return [(etag, length) for etag, length in parts]


class S3Write:
    """One resumable write's state, checked: this store's, for C{key}."""

    def __init__(self, store: S3BlobStore, key: str, text: str) -> None:
        state = loadState(text, "s3", store.endpoint, key)
        self.text = text
        self.key = key
        upload, partLength = state.get("upload"), state.get("partSize")
        if not isinstance(upload, str) or not upload:
            raise ForeignState(f"the state of the write to {key} has no upload id")
        if not isinstance(partLength, int) or partLength < 5 * 1024 * 1024:
            raise ForeignState(f"the state of the write to {key} has no part size")
        self.upload: str = upload
        self.partSize: int = partLength
        self.parts = _parts(state)
        self.prefix = stagedPrefix(key, upload)
        self.staged: tuple[str, int] | None = None
        staged = state.get("staged")
        if staged is not None:
            if not (
                isinstance(staged, list)
                and len(staged) == 2
                and isinstance(staged[0], str)
                and staged[0].startswith(self.prefix)
                and isinstance(staged[1], int)
                and staged[1] > 0
            ):
                raise ForeignState(f"the state of the write to {key} has a foreign tail")
            self.staged = (staged[0], staged[1])
        stale = state.get("stale") or []
        self.stale = [s for s in stale if isinstance(s, str) and s.startswith(self.prefix)]
        self.size = state.get("size") if isinstance(state.get("size"), int) else None

    @property
    def offset(self) -> int:
        return sum(length for _, length in self.parts) + (self.staged[1] if self.staged else 0)

    def dump(
        self,
        store: S3BlobStore,
        parts: list[tuple[str, int]],
        staged: tuple[str, int] | None,
        stale: list[str],
    ) -> str:
        return dumpState(
            {
                "store": "s3",
                "endpoint": store.endpoint,
                "key": self.key,
                "upload": self.upload,
                "partSize": self.partSize,
                "size": self.size,
                "parts": [list(p) for p in parts],
                "staged": None if staged is None else list(staged),
                "stale": stale,
            }
        )


class S3Appender(UnitAppender[str]):
    """A request's bytes as parts of the write's multipart upload."""

    def __init__(self, store: S3BlobStore, write: S3Write, offset: int, end: int | None) -> None:
        from ._s3 import MAX_PARTS

        self._store = store
        self._write = write
        pieces = [write.staged] if write.staged is not None else []
        super().__init__(
            write.key,
            offset,
            end,
            write.partSize,
            pieces,
            MAX_PARTS * write.partSize,
            store.budget.join(),
            store.highWater,
            lambda name, consumer, length: store.produce(name, consumer, 0, length),
        )

    def _sendUnit(self, length: int, body: StreamBody) -> Deferred[str]:
        number = len(self._write.parts) + len(self.units) + 1
        return self._store._uploadPart(self.key, self._write.upload, number, body)

    def _tailUnit(self, rest: int, final: bool) -> int:
        # The blob's last part may be short; any other waits, staged.
        return rest if final else 0

    def _stagedName(self, offset: int) -> str:
        return stagedName(self.key, self._write.upload, offset)

    def _stage(self, name: str, length: int, body: StreamBody) -> Deferred[Any]:
        what = f"S3 PutObject of a staged piece of {self.key}"
        d = self._store._request("PUT", name, what, body=body)
        return d.addCallback(self._store._drained)

    def _state(self, staged: tuple[str, int] | None) -> Appended:
        write = self._write
        parts = write.parts + [(etag, length) for length, etag in self.units]
        stale = [write.staged[0]] if write.staged is not None else []
        state = write.dump(self._store, parts, staged, stale)
        return Appended(state, sum(p[1] for p in parts) + (staged[1] if staged else 0))

    def _dropped(self) -> Appended:
        return Appended(self._write.text, self._write.offset)


class S3Resumable:
    """The resumable writes of one L{S3BlobStore}."""

    def __init__(self, store: S3BlobStore) -> None:
        self.store = store

    def begin(self, key: str, size: int | None) -> Deferred[str]:
        from ._s3 import partSize

        store = self.store
        # An appender holds a whole part: of a known size, parts as short as
        # 10,000 of them allow (down to RESUMABLE_PART); of a size not known
        # yet, the store's own, so that as large a blob fits.
        if size is None:
            length = store.partSize
        else:
            length = partSize(size, min(store.partSize, RESUMABLE_PART))
        what = f"S3 CreateMultipartUpload of {key}"

        def started(body: bytes) -> str:
            upload = _findText(ElementTree.fromstring(body), "UploadId")
            if not upload:
                raise BlobStoreError(f"S3 gave no UploadId for {key}")
            return dumpState(
                {
                    "store": "s3",
                    "endpoint": store.endpoint,
                    "key": key,
                    "upload": upload,
                    "partSize": length,
                    "size": size,
                    "parts": [],
                    "staged": None,
                    "stale": [],
                }
            )

        d = store._request("POST", key, what, query="uploads")
        return d.addCallback(store._read).addCallback(started)

    def append(
        self, key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> S3Appender:
        write = S3Write(self.store, key, state)
        if offset != write.offset:
            raise ValueError(f"the write to {key} holds {write.offset} bytes, not {offset}")
        deleteQuietly(self.store.delete, write.stale, key)
        return S3Appender(self.store, write, offset, end)

    def conclude(self, key: str, state: str, size: int) -> Deferred[None]:
        write = S3Write(self.store, key, state)
        return Deferred.fromCoroutine(self._conclude(write, size))

    async def _conclude(self, write: S3Write, size: int) -> None:
        store, key = self.store, write.key
        if write.offset != size:
            raise SizeMismatch(size, write.offset)
        try:
            await self._complete(write)
        except BlobStoreError:
            if not await concludedBefore(store.stat, key, size):
                raise
        await self._removeStaged(write)

    async def _complete(self, write: S3Write) -> None:
        store, key, parts = self.store, write.key, write.parts
        if write.staged is not None:
            # The tail goes in as the last part, streamed back from its piece.
            tail = S3Appender(store, write, write.offset, write.offset)
            appended = await tail.close()
            parts = S3Write(store, key, appended.state).parts
        if not parts:
            # An empty blob: no part to complete an upload with.
            await store._drained(await store._request("PUT", key, f"S3 PutObject of {key}"))
            await store._abortUpload(key, write.upload)
        else:
            await store._complete(key, write.upload, [etag for etag, _ in parts])

    def cancel(self, key: str, state: str) -> Deferred[None]:
        write = S3Write(self.store, key, state)

        async def run() -> None:
            await self.store._abortUpload(key, write.upload)
            await self._removeStaged(write)

        return Deferred.fromCoroutine(run())

    async def _removeStaged(self, write: S3Write) -> None:
        for name in await self.listStaged(write.prefix):
            await self.store.delete(name)

    async def listStaged(self, prefix: str) -> list[str]:
        """Every object under C{prefix} (ListObjectsV2, page by page)."""
        store, names, token = self.store, [], None
        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='')}"
            if token is not None:
                query += f"&continuation-token={quote(token, safe='')}"
            what = f"S3 ListObjectsV2 of {store.bucket}/{prefix}"
            response: IResponse = await store._request("GET", None, what, query=query)
            root = ElementTree.fromstring(await store._read(response, 16 * 1024 * 1024))
            for element in root.iter():
                if element.tag in ("Contents", _NS + "Contents"):
                    name = _findText(element, "Key") or ""
                    if name.startswith(prefix):
                        names.append(name)
            truncated = (_findText(root, "IsTruncated") or "").strip().lower() == "true"
            token = _findText(root, "NextContinuationToken") if truncated else None
            if not token:
                return names


def _findText(root: ElementTree.Element, name: str) -> str | None:
    for element in root.iter():
        if element.tag in (name, _NS + name):
            return element.text
    return None
