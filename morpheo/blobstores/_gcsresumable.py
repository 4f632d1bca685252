# -*- test-case-name: tests.integration.test_resumable_contract -*-
"""
Resumable writes to Google Cloud Storage
(L{morpheo._interfaces.IResumableBlobStore}): one resumable upload session
over many requests.

A session takes chunks that are multiples of 256 KiB, but for the last,
and never gives back what it took.  So the state records the session's
URL (used only if it is this store's own, L{GCSBlobStore.ownSession}), the
bytes the session holds, and the staged pieces that follow them: a
request's tail shorter than 256 KiB, and the whole body of a revocable
request (streamed into an object of its own by the store's writer, so that
it can be dropped), pushed into the session ahead of the next
non-revocable request's bytes or by L{conclude}, whose last chunk carries
the blob's size and makes the object.  The blob's last byte never reaches
the session before L{conclude}: the object would exist.

Before it sends, a request asks the session how much it holds (a PUT of
nothing with C{Content-Range: bytes */*}, answered 308 with a C{Range}),
so that what a request cut after its chunk reached Google, but before its
state was kept, is not sent twice: those bytes are skipped.
fake-gcs-server finishes an upload when asked that, so a store spoken to
anonymously (an emulator) does not ask unless told to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer
from twisted.web.iweb import IResponse
from zope.interface import implementer

from .._errors import BlobStoreError, SizeMismatch, TooLarge
from .._interfaces import IAppender
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
    from ._gcs import GCSBlobStore

CHUNK_UNIT = 256 * 1024
#: The chunk length of a resumable write, at most: each request being
#: received holds one chunk (its staged piece, if revocable, as well).
RESUMABLE_CHUNK = 8 * 1024 * 1024


class GCSWrite:
    """One resumable write's state, checked: this store's, for C{key}."""

    def __init__(self, store: GCSBlobStore, key: str, text: str) -> None:
        state = loadState(text, "gcs", store.identity, key)
        self.text = text
        self.key = key
        session, held = state.get("session"), state.get("held")
        if not isinstance(session, str) or not store.ownSession(key, session):
            raise ForeignState(f"the state of the write to {key} has no session of this store")
        if not isinstance(held, int) or held < 0 or held % CHUNK_UNIT:
            raise ForeignState(f"the state of the write to {key} has no count of bytes held")
        self.session: str = session
        self.held: int = held
        self.prefix = stagedPrefix(key, session)
        staged = state.get("staged")
        if not isinstance(staged, list) or not all(
            isinstance(p, list)
            and len(p) == 2
            and isinstance(p[0], str)
            and p[0].startswith(self.prefix)
            and isinstance(p[1], int)
            and p[1] > 0
            for p in staged
        ):
            raise ForeignState(f"the state of the write to {key} has foreign pieces")
        self.staged: list[tuple[str, int]] = [(name, length) for name, length in staged]
        stale = state.get("stale") or []
        self.stale = [s for s in stale if isinstance(s, str) and s.startswith(self.prefix)]
        size = state.get("size")
        self.size: int | None = size if isinstance(size, int) else None

    @property
    def offset(self) -> int:
        return self.held + sum(length for _, length in self.staged)

    def dump(
        self, store: GCSBlobStore, held: int, staged: list[tuple[str, int]], stale: list[str]
    ) -> str:
        return dumpState(
            {
                "store": "gcs",
                "endpoint": store.identity,
                "key": self.key,
                "session": self.session,
                "held": held,
                "size": self.size,
                "staged": [list(p) for p in staged],
                "stale": stale,
            }
        )


class GCSAppender(UnitAppender[None]):
    """
    A request's bytes, after the staged pieces, pushed into the session in
    chunks; or, C{concluding}, the staged pieces alone, the last chunk
    carrying the blob's size.
    """

    strict = True

    def __init__(
        self,
        store: GCSBlobStore,
        write: GCSWrite,
        offset: int,
        end: int | None,
        concluding: bool = False,
    ) -> None:
        from ._gcs import MAX_OBJECT

        self._store = store
        self._write = write
        self._concluding = concluding
        #: Where the session is when this appender sends its first chunk.
        self._start = write.held
        prelude: Deferred[int] | None = None
        if store.askSessions:
            prelude = store._resumable.persisted(write).addCallback(self._resume)
        super().__init__(
            write.key,
            offset,
            end,
            min(store.chunkSize, RESUMABLE_CHUNK),
            list(write.staged),
            MAX_OBJECT,
            store.budget.join(),
            store.highWater,
            lambda name, consumer, length: store.produce(name, consumer, 0, length),
            prelude,
        )

    def _resume(self, persisted: int) -> int:
        if persisted < self._write.held:
            raise BlobStoreError(
                f"the upload session of {self.key} holds {persisted} bytes,"
                f" fewer than the {self._write.held} it took"
            )
        self._start = persisted
        return persisted - self._write.held

    def _sendUnit(self, length: int, body: StreamBody) -> Deferred[None]:
        start = self._start + sum(n for n, _ in self.units)
        last = start + length - 1
        size = self._write.size
        final = self._concluding and self.end is not None and last + 1 == self.end
        total = str(self.end) if final else "*" if size is None else str(size)
        what = f"GCS upload of {self.key} (bytes {start}-{last})"
        store = self._store

        def accepted(response: IResponse) -> Deferred[None]:
            if not final:
                got = response.headers.getRawHeaders("range", [""])[0]
                if got != f"bytes=0-{last}":
                    raise BlobStoreError(f"{what}: GCS kept only {got or 'nothing'}")
            return store._drained(response)

        d = store._call(
            "PUT",
            self._write.session,
            what,
            headers={"Content-Range": f"bytes {start}-{last}/{total}"},
            body=body,
            ok=(200, 201) if final else (308,),
        )
        return d.addCallback(accepted)

    def _tailUnit(self, rest: int, final: bool) -> int:
        if self._concluding:
            return rest
        # Whole multiples of 256 KiB go; the blob's last byte waits.
        whole = rest - rest % CHUNK_UNIT
        return whole - CHUNK_UNIT if whole and whole == rest else whole

    def _stagedName(self, offset: int) -> str:
        return stagedName(self.key, self._write.session, offset)

    def _stage(self, name: str, length: int, body: StreamBody) -> Deferred[Any]:
        return self._store._resumable.putPiece(name, body)

    def _state(self, staged: tuple[str, int] | None) -> Appended:
        write = self._write
        held = self._start + sum(n for n, _ in self.units)
        pieces = [staged] if staged is not None else []
        state = write.dump(self._store, held, pieces, [name for name, _ in write.staged])
        return Appended(state, held + sum(n for _, n in pieces))

    def _dropped(self) -> Appended:
        if self.units or self._start != self._write.held:
            raise BlobStoreError(
                f"the upload session of {self.key} took this request's bytes already:"
                " only a revocable append can be dropped"
            )
        return Appended(self._write.text, self._write.offset)


@implementer(IAppender)
class GCSStagingAppender:
    """
    A revocable request's bytes, all staged as one piece by the store's
    writer of unknown size: kept, the piece is the state's last; dropped,
    it goes, and the state is the one from before.
    """

    def __init__(self, store: GCSBlobStore, write: GCSWrite, offset: int, end: int | None):
        from ._gcs import MAX_OBJECT

        self._store = store
        self._write = write
        self.offset = offset
        self.end = end
        self.maximum = MAX_OBJECT
        self._name = stagedName(write.key, write.session, offset)
        from ._gcs import _GCSWriter

        self._writer = _GCSWriter(
            store, self._name, None, chunkSize=min(store.chunkSize, RESUMABLE_CHUNK)
        )
        self._received = 0
        self._closed = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._writer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._writer.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write after close()")
        total = self.offset + self._received + len(data)
        if self.end is not None and total > self.end:
            raise SizeMismatch(self.end, total)
        if total > self.maximum:
            raise TooLarge(self.maximum)
        self._received += len(data)
        self._writer.write(data)

    def close(self, keep: bool = True) -> Deferred[Appended]:
        if self._closed:
            raise RuntimeError("close() called twice")
        self._closed = True
        write = self._write
        before = Appended(write.text, write.offset)
        if not keep or not self._received:
            return self._writer.abort().addCallback(lambda _: before)

        def kept(info: Any) -> Appended:
            staged = [*write.staged, (self._name, info.size)]
            state = write.dump(self._store, write.held, staged, [])
            return Appended(state, write.offset + info.size)

        return self._writer.finish().addCallback(kept)


class GCSResumable:
    """The resumable writes of one L{GCSBlobStore}."""

    def __init__(self, store: GCSBlobStore) -> None:
        self.store = store

    def begin(self, key: str, size: int | None) -> Deferred[str]:
        store = self.store
        d = store._startSession(key, size, f"GCS starting the resumable upload of {key}")

        def started(session: str) -> str:
            return dumpState(
                {
                    "store": "gcs",
                    "endpoint": store.identity,
                    "key": key,
                    "session": session,
                    "held": 0,
                    "size": size,
                    "staged": [],
                    "stale": [],
                }
            )

        return d.addCallback(started)

    def append(
        self, key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> IAppender:
        write = GCSWrite(self.store, key, state)
        if offset != write.offset:
            raise ValueError(f"the write to {key} holds {write.offset} bytes, not {offset}")
        deleteQuietly(self.store.delete, write.stale, key)
        if revocable:
            return GCSStagingAppender(self.store, write, offset, end)
        return GCSAppender(self.store, write, offset, end)

    def persisted(self, write: GCSWrite) -> Deferred[int]:
        """How many bytes the session holds, by its own account."""
        what = f"GCS asking the upload session of {write.key} where it is"
        total = "*" if write.size is None else str(write.size)
        d = self.store._call(
            "PUT", write.session, what, headers={"Content-Range": f"bytes */{total}"}, ok=(308,)
        )

        def count(response: IResponse) -> Deferred[int]:
            got = response.headers.getRawHeaders("range", [""])[0]
            if not got:
                return self.store._drained(response, 0)
            first, _, last = got.removeprefix("bytes=").partition("-")
            if first != "0" or not last.isdigit():
                raise BlobStoreError(f"{what}: it answered {got!r}")
            return self.store._drained(response, int(last) + 1)

        return d.addCallback(count)

    def putPiece(self, name: str, body: StreamBody) -> Deferred[None]:
        store = self.store
        url = f"{store._base}/upload/storage/v1/b/{store._bucketPath}/o"
        query = "uploadType=media&name=" + quote(name, safe="")
        what = "GCS staging a piece of a resumable upload"
        d = store._call("POST", f"{url}?{query}", what, body=body, ok=(200, 201))
        return d.addCallback(store._drained)

    def conclude(self, key: str, state: str, size: int) -> Deferred[None]:
        write = GCSWrite(self.store, key, state)
        return Deferred.fromCoroutine(self._conclude(write, size))

    async def _conclude(self, write: GCSWrite, size: int) -> None:
        store = self.store
        if write.offset != size:
            raise SizeMismatch(size, write.offset)
        try:
            await self._finishSession(write, size)
        except BlobStoreError:
            if not await concludedBefore(store.stat, write.key, size):
                raise
        await self._removeStaged(write)

    async def _finishSession(self, write: GCSWrite, size: int) -> None:
        store = self.store
        if write.staged:
            appender = GCSAppender(store, write, write.offset, size, concluding=True)
            await appender.close()
        else:
            # Every byte is in the session: it is told the size, and ends.
            what = f"GCS finishing the upload of {write.key}"
            response = await store._call(
                "PUT",
                write.session,
                what,
                headers={"Content-Range": f"bytes */{size}"},
                ok=(200, 201),
            )
            await store._drained(response)

    def cancel(self, key: str, state: str) -> Deferred[None]:
        write = GCSWrite(self.store, key, state)

        async def run() -> None:
            await self.store._cancelSession(key, write.session)
            await self._removeStaged(write)

        return Deferred.fromCoroutine(run())

    async def _removeStaged(self, write: GCSWrite) -> None:
        for name in await self.store._listNames(write.prefix):
            await self.store.delete(name)
