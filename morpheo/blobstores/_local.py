# -*- test-case-name: tests.unit.test_local_trips,tests.integration.test_blobstore_contract -*-
"""
Blobs as files under a directory.

A blob is written into a temporary file beside its final place, fsynced,
and renamed into place only once its size and sha256 are final, so no
reader ever sees a partial blob.  Temporary files start with C{.tmp-} so
that a crash leaves something recognisable to sweep; the store knows the
ones its writers have open, which are never swept, however long their
upload stalls (one process per directory, unless it is shared: then the
other nodes' are swept by age alone).

A resumable write (L{IResumableBlobStore}) appends to a file of its own
beside its blob's place, named C{.upload-} and random: the sweep of
temporary files leaves it alone, however long its upload waits between
requests (the uploads' own sweep cancels the expired ones), until it is
concluded (fsynced and renamed in) or cancelled.  Its state names that
file, never a path: a state read back is checked to name a file of that
shape in the directory of its key.

The directory knows which store it is: an id file at its top (see
L{LocalBlobStore.identify}), which moves with the blobs when the directory
is moved or mounted elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from typing import IO, Any

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IConsumer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._errors import BlobNotFound, BlobStoreError, SizeMismatch
from .._interfaces import (
    KEY_PAGE,
    IBlobFile,
    IFileBlobStore,
    IResumableBlobStore,
    ISweepableBlobStore,
)
from .._kinds import KINDS, isBlobKey
from .._types import Appended
from ._appending import Appender
from ._flow import MemoryBudget
from ._producer import BLOCK, ThreadedReadProducer
from ._threaded import HIGH, LOW, STEP, ThreadedBlobWriter

TEMP_PREFIX = ".tmp-"
#: The files of resumable writes: left alone by L{LocalBlobStore.sweepTemporary}.
UPLOAD_PREFIX = ".upload-"
_UPLOAD_NAME = re.compile(r"\.upload-[A-Za-z0-9_-]{22}")
#: The store's identity (a uuid), at the top of its directory.
ID_FILE = ".morpheo-store-id"

#: Every this many bytes written, the kernel is asked to start writing them
#: to disk: the disk works while the upload goes on, and the fsync at the
#: end has only the tail left to wait for instead of the whole blob.
WRITEBACK_STEP = 32 * 1024 * 1024
# Linux has it; macOS does not (the fsync then waits for the whole blob).
_fadvise = getattr(os, "posix_fadvise", None)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 4)
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


def keyPath(root: str, key: str) -> str:
    """The file for C{key}; refuses anything that could leave C{root}."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"not a blob key: {key!r}")
    return os.path.join(root, *key.split("/"))


class _LocalWriter(ThreadedBlobWriter):
    def __init__(self, store: LocalBlobStore, *args: Any) -> None:
        super().__init__(*args)
        self._store = store
        self._path = keyPath(store.root, self.key)
        self._file: IO[bytes] | None = None
        self._tmp: str | None = None
        self._written = 0
        self._writtenBack = 0

    def _openInThread(self) -> None:
        directory = os.path.dirname(self._path)
        os.makedirs(directory, exist_ok=True)
        with self._store._writingLock:
            fd, self._tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
            self._store._writing.add(self._tmp)
        self._file = os.fdopen(fd, "wb", buffering=0)

    def _writeInThread(self, chunks: list[bytes]) -> None:
        # One writev per batch: few large writes are much cheaper than many
        # 64 KiB ones.
        assert self._file is not None
        fd = self._file.fileno()
        _writeAll(fd, chunks)
        self._written += sum(map(len, chunks))
        if _fadvise is not None and self._written - self._writtenBack >= WRITEBACK_STEP:
            # Starts the writeback of these pages without waiting for it
            # (and lets the cache drop them once they are clean).
            _fadvise(fd, self._writtenBack, self._written - self._writtenBack, _DONTNEED)
            self._writtenBack = self._written

    def _commitInThread(self) -> None:
        assert self._file is not None and self._tmp is not None
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self._path)
        self._store._writing.discard(self._tmp)
        self._tmp = None
        self._store._syncs.sync(os.path.dirname(self._path))

    def _discardInThread(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._store._writing.discard(self._tmp)
            self._tmp = None


class _LocalAppender(Appender):
    """
    Appends to a resumable write's file, in the pool, behind a bounded
    queue (as L{ThreadedBlobWriter} writes a new one).  The file is cut
    back to C{offset} when first opened: bytes past it are a request's that
    never reached the database (its process was killed), which its client
    was never told of and sends again.
    """

    def __init__(
        self,
        store: LocalBlobStore,
        path: str,
        state: str,
        offset: int,
        end: int | None,
    ) -> None:
        super().__init__(state, offset, end, HIGH, LOW, store.budget.join())
        self._store = store
        self._path = path
        self._fd: int | None = None
        self._lock = DeferredLock()
        self._pending: deque[bytes] = deque()
        self._flushing: Deferred[None] | None = None
        #: The bytes the thread has written to the file.
        self._written = 0

    def _inThread(self, f: Any, *args: object) -> Deferred[Any]:
        return self._lock.run(deferToThreadPool, self._store._reactor, self._store._pool, f, *args)

    def _step(self) -> int:
        return min(STEP, max(1, self._buffer.high // 4))

    def _accept(self, data: bytes) -> None:
        self._pending.append(data)
        if self._flushing is None:
            self._flushing = self._inThread(self._flush, self._step())

    # The thread side

    def _open(self) -> int:
        if self._fd is None:
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise BlobStoreError(f"the file of the write to {self._path} is gone") from None
            self._fd = fd
            size = os.fstat(fd).st_size
            if size < self.offset:
                raise BlobStoreError(
                    f"{self._path} holds {size} bytes, fewer than the {self.offset} recorded"
                )
            if size > self.offset:
                os.ftruncate(fd, self.offset)
            os.lseek(fd, self.offset, os.SEEK_SET)
        return self._fd

    def _flush(self, step: int) -> None:
        try:
            while self._pending and self._failure is None:
                chunks, n = [], 0
                while self._pending and n < step:
                    chunk = self._pending.popleft()
                    chunks.append(chunk)
                    n += len(chunk)
                try:
                    _writeAll(self._open(), chunks)
                except Exception as e:
                    self._store._reactor.callFromThread(self._flushFailed, e, n)
                    return
                self._written += n
                self._store._reactor.callFromThread(self._buffer.shrank, n)
        except Exception as e:
            self._store._reactor.callFromThread(self._flushFailed, e, 0)
            return
        self._store._reactor.callFromThread(self._flushed)

    def _flushed(self) -> None:
        if self._pending and self._failure is None:
            self._flushing = self._inThread(self._flush, self._step())
        else:
            self._flushing = None

    def _flushFailed(self, e: Exception, n: int) -> None:
        self._buffer.shrank(n)
        self._flushing = None
        if not isinstance(e, BlobStoreError):
            e = BlobStoreError(f"appending to {self._path} failed: {e}")
        self._buffer.shrank(sum(map(len, self._pending)))
        self._pending.clear()
        self._fail(Failure(e))

    def _end(self, keep: bool) -> int:
        """Make the bytes written durable, or cut them off; the new offset."""
        try:
            fd = self._open()
            if not keep:
                os.ftruncate(fd, self.offset)
            # Its time says when its upload was last at work (see
            # LocalBlobStore.uploadLifetime), even for a request of no bytes.
            os.utime(fd)
            os.fsync(fd)
        except OSError as e:
            raise BlobStoreError(f"ending the append to {self._path} failed: {e}") from e
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        return self.offset + self._written if keep else self.offset

    def _close(self, keep: bool) -> Deferred[Appended]:
        async def close() -> Appended:
            if not keep:
                self._buffer.shrank(sum(map(len, self._pending)))
                self._pending.clear()
            # Queued behind any running flush, it writes what is left.
            await self._inThread(self._flush, self._step())
            if keep and self._failure is not None:
                await self._inThread(self._end, False)
                self._failure.raiseException()
            offset = await self._inThread(self._end, keep and self._failure is None)
            return Appended(self.state, offset)

        return Deferred.fromCoroutine(close())


def _writeAll(fd: int, chunks: list[bytes]) -> None:
    """One writev per batch of at most IOV_MAX buffers, to their end."""
    for start in range(0, len(chunks), _IOV_MAX):
        batch = [memoryview(c) for c in chunks[start : start + _IOV_MAX]]
        while batch:
            written = os.writev(fd, batch)
            while batch and written >= len(batch[0]):
                written -= len(batch[0])
                batch.pop(0)
            if batch and written:
                batch[0] = batch[0][written:]


def _fsyncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySyncs:
    """
    The fsyncs of directories, shared by the threads that need them: one
    that asks is answered by an fsync begun after it asked (what it did
    in the directory before, a rename, is then durable), and all those
    that ask while one runs share the next.  Uploads that end together
    in one kind's directory then cost one directory fsync, not one each.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        #: The fsyncs begun and ended, by directory; which run now.
        self._begun: dict[str, int] = {}
        self._ended: dict[str, int] = {}
        self._running: set[str] = set()

    def sync(self, path: str) -> None:
        """Return once an fsync of C{path} begun after this call has ended."""
        with self._changed:
            wanted = self._begun.get(path, 0) + 1
            while self._ended.get(path, 0) < wanted:
                if path in self._running:
                    self._changed.wait()
                    continue
                self._running.add(path)
                self._begun[path] = number = self._begun.get(path, 0) + 1
                self._changed.release()
                try:
                    _fsyncDirectory(path)
                    ended = True
                except BaseException:
                    ended = False
                    raise
                finally:
                    # A failed fsync is no one's: the next caller tries its own.
                    self._changed.acquire()
                    self._running.discard(path)
                    if ended:
                        self._ended[path] = number
                    self._changed.notify_all()


def _openDirectory(path: str) -> Any:
    """An iterator over the directory's entries, or None if there is none."""
    try:
        return os.scandir(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BlobStoreError(f"cannot list {path}: {e.strerror}") from e


def _readPage(
    entries: Iterator[os.DirEntry[str]], kind: str, limit: float, size: int
) -> tuple[list[str], bool]:
    """
    The next keys of C{kind} among C{entries}, modified by C{limit} (the
    time), up to C{size} of them; and whether the directory may hold more.
    """
    page: list[str] = []
    for entry in entries:
        key = f"{kind}/{entry.name}"
        if not isBlobKey(key):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime > limit:
                continue
        except FileNotFoundError:
            continue
        page.append(key)
        if len(page) >= size:
            return page, True
    return page, False


@frozen
class LocalIdentity:
    """Which store a directory is (C{storeId}, from its id file), and whether
    that id was made just now (C{new})."""

    storeId: str
    new: bool


@implementer(IBlobFile)
class _BlobFile:
    """A blob's file open for reading, its work in its store's pool."""

    def __init__(self, file: IO[bytes], size: int, store: LocalBlobStore) -> None:
        self.size = size
        self._file = file
        self._store = store

    def fileno(self) -> int:
        return self._file.fileno()

    def inThread(self, f: Any, *args: object) -> Deferred[Any]:
        return self._store._inThread(f, *args)

    def close(self) -> Deferred[None]:
        return self.inThread(self._file.close)


def _openBlob(path: str, key: str) -> tuple[IO[bytes], int]:
    """The blob's file, open, and its size."""
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise BlobNotFound(key) from None
    except OSError as e:
        raise BlobStoreError(f"cannot open blob {key}: {e.strerror}") from e
    try:
        return f, os.fstat(f.fileno()).st_size
    except BaseException:
        f.close()
        raise


@implementer(ISweepableBlobStore, IFileBlobStore, IResumableBlobStore)
class LocalBlobStore:
    """
    Blobs as files under C{root}, all file work in C{pool}.  Its uploads
    and downloads share C{budget} (by default L{TRANSFER_BUDGET
    <morpheo.blobstores._flow.TRANSFER_BUDGET>} bytes) for what they hold
    in memory.

    @param shared: other nodes use C{root} at the same time (a directory
        every node mounts): young temporary files and blobs in it may be
        theirs, even at start-up.
    """

    name = "local"
    #: Its failures are this service's own (500), not a backend's (502).
    remote = False

    def __init__(
        self,
        root: str,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        shared: bool = False,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.shared = shared
        self.budget = MemoryBudget() if budget is None else budget
        self._reactor = reactor
        self._pool = pool
        #: The temporary files of the writes in progress (their paths):
        #: swept never.  The lock makes creating one and sweeping one
        #: exclude each other.
        self._writing: set[str] = set()
        self._writingLock = threading.Lock()
        self._syncs = DirectorySyncs()
        #: How long, in seconds, a resumable write's file outlives its last
        #: request at most (its upload's expiry, and some): older ones are a
        #: crash's, whose upload was never recorded, and are swept.  L{None}:
        #: never swept here (the uploads' own sweep cancels them).
        self.uploadLifetime: float | None = None

    def _inThread(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def writer(self, key: str, size: int | None) -> _LocalWriter:
        return _LocalWriter(self, key, size, self._reactor, self._pool, self.budget.join())

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        """
        The file is opened and its first block read in one trip to the
        pool; a blob of one block is closed in it too: a small blob costs
        one thread hop, not three.
        """
        path = keyPath(self.root, key)
        share = self.budget.join()
        block = share.size(4 * BLOCK) // 4

        def openFile() -> tuple[IO[bytes] | None, int, bytes]:
            f, size = _openBlob(path, key)
            try:
                want = size - offset if length is None else length
                first = os.pread(f.fileno(), min(block, want), offset) if want > 0 else b""
                if len(first) >= want:
                    f.close()
                    return None, want, first
                f.seek(offset + len(first))
                return f, want, first
            except BaseException:
                f.close()
                raise

        def start(opened: tuple[IO[bytes] | None, int, bytes]) -> Deferred[None]:
            f, want, first = opened
            producer = ThreadedReadProducer(
                f, want, consumer, self._inThread, share=share, first=first
            )
            return producer.beginProducing()

        def failed(reason: Any) -> Any:
            share.leave()
            return reason

        return self._inThread(openFile).addCallbacks(start, failed)

    def openBlob(self, key: str) -> Deferred[IBlobFile]:
        path = keyPath(self.root, key)

        def opened(result: tuple[IO[bytes], int]) -> IBlobFile:
            return _BlobFile(result[0], result[1], self)

        return self._inThread(_openBlob, path, key).addCallback(opened)

    # Resumable writes

    def _uploadPath(self, key: str, state: str) -> str:
        """The file C{state} names, in the directory of C{key}'s blob: a
        state that names anything else is not this store's."""
        try:
            parsed = json.loads(state)
            name, stateKey = parsed["file"], parsed["key"]
        except (ValueError, TypeError, KeyError):
            name = stateKey = None
        if not isinstance(name, str) or not _UPLOAD_NAME.fullmatch(name) or stateKey != key:
            raise BlobStoreError("not the state of a local store's resumable write to that key")
        return os.path.join(os.path.dirname(keyPath(self.root, key)), name)

    def begin(self, key: str, size: int | None) -> Deferred[str]:
        directory = os.path.dirname(keyPath(self.root, key))

        def create() -> str:
            name = UPLOAD_PREFIX + secrets.token_urlsafe(16)
            try:
                os.makedirs(directory, exist_ok=True)
                fd = os.open(
                    os.path.join(directory, name),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
                os.close(fd)
                _fsyncDirectory(directory)
            except OSError as e:
                raise BlobStoreError(f"cannot start a write in {directory}: {e.strerror}") from e
            return json.dumps({"file": name, "key": key})

        return self._inThread(create)

    def append(
        self, key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> _LocalAppender:
        """Every append is revocable here: a file is cut back as easily."""
        return _LocalAppender(self, self._uploadPath(key, state), state, offset, end)

    def conclude(self, key: str, state: str, size: int) -> Deferred[None]:
        path = keyPath(self.root, key)
        tmp = self._uploadPath(key, state)

        def rename() -> None:
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # Concluded already (its caller did not hear it)?
                try:
                    if os.stat(path).st_size == size:
                        return
                except OSError:
                    pass
                raise BlobStoreError(f"the file of the write to {key} is gone") from None
            except OSError as e:
                raise BlobStoreError(f"cannot open {tmp}: {e.strerror}") from e
            try:
                held = os.fstat(fd).st_size
                if held != size:
                    raise SizeMismatch(size, held)
                os.fsync(fd)
            except OSError as e:
                raise BlobStoreError(f"cannot commit {tmp}: {e.strerror}") from e
            finally:
                os.close(fd)
            try:
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
                _fsyncDirectory(os.path.dirname(path))
            except OSError as e:
                raise BlobStoreError(f"cannot commit {tmp} as {key}: {e.strerror}") from e

        return self._inThread(rename)

    def cancel(self, key: str, state: str) -> Deferred[None]:
        tmp = self._uploadPath(key, state)

        def remove() -> None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise BlobStoreError(f"cannot remove {tmp}: {e.strerror}") from e

        return self._inThread(remove)

    def stat(self, key: str) -> Deferred[int]:
        """
        Open the file and close it again: an open, unlike a stat, needs
        read permission and, on NFS, asks the server (close-to-open), where
        a stat may answer from the client's cache for a file removed since.
        """
        path = keyPath(self.root, key)

        def size() -> int:
            try:
                with open(path, "rb", buffering=0) as f:
                    return os.fstat(f.fileno()).st_size
            except FileNotFoundError:
                raise BlobNotFound(key) from None
            except OSError as e:
                raise BlobStoreError(f"cannot open blob {key}: {e.strerror}") from e

        return self._inThread(size)

    def delete(self, key: str) -> Deferred[None]:
        path = keyPath(self.root, key)

        def remove() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise BlobStoreError(f"cannot delete blob {key}: {e.strerror}") from e

        return self._inThread(remove)

    def check(self) -> Deferred[None]:
        def probe() -> None:
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise BlobStoreError(f"cannot make {self.root}: {e.strerror}") from e
            if not os.path.isdir(self.root):
                raise BlobStoreError(f"{self.root} is not a directory")
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise BlobStoreError(f"{self.root} is not writable")

        return self._inThread(probe)

    async def listKeys(
        self, olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        """
        Each kind's directory read on as the pages are asked for, one page
        at a time in the thread pool: a directory of a million blobs is
        never read whole into memory.
        """
        limit = time.time() - olderThan
        for kind in KINDS:
            entries = await self._inThread(_openDirectory, os.path.join(self.root, kind))
            if entries is None:
                continue
            try:
                while True:
                    page, more = await self._inThread(_readPage, entries, kind, limit, pageSize)
                    if page:
                        yield page
                    if not more:
                        break
            finally:
                await self._inThread(entries.close)

    def identify(self) -> Deferred[LocalIdentity]:
        """
        Which store this directory is: the uuid of its id file, made now if
        it has none.  Nodes starting together on a new shared directory
        agree: the file is written aside and linked into place, and the
        one whose link fails reads the winner's.
        """

        def identify() -> LocalIdentity:
            path = os.path.join(self.root, ID_FILE)
            new = False
            try:
                storeId = _readIdentity(path)
            except FileNotFoundError:
                storeId, new = _makeIdentity(self.root, path)
            return LocalIdentity(storeId, new)

        return self._inThread(identify)

    def sweepTemporary(self, olderThan: float = 0.0) -> Deferred[list[str]]:
        """
        Remove temporary files left by a crash, older than C{olderThan}
        seconds; fires with what was removed.  Those of this store's writes
        in progress stay, however old: an upload may stall for long.
        """

        def sweep() -> list[str]:
            removed = []
            limit = time.time() - olderThan
            uploads = None
            if self.uploadLifetime is not None:
                uploads = time.time() - max(olderThan, self.uploadLifetime)
            for dirpath, _, files in os.walk(self.root):
                for name in files:
                    if uploads is not None and _UPLOAD_NAME.fullmatch(name):
                        p = os.path.join(dirpath, name)
                        try:
                            if os.stat(p).st_mtime <= uploads:
                                os.unlink(p)
                                removed.append(p)
                        except FileNotFoundError:
                            pass
                    elif name.startswith(TEMP_PREFIX):
                        p = os.path.join(dirpath, name)
                        try:
                            with self._writingLock:
                                if p in self._writing:
                                    continue
                                if os.stat(p).st_mtime <= limit:
                                    os.unlink(p)
                                    removed.append(p)
                        except OSError as e:
                            if e.errno != errno.ENOENT:
                                raise
            return removed

        return self._inThread(sweep)


def _readIdentity(path: str) -> str:
    """The uuid of the id file at C{path}; a file that holds none is
    refused, never replaced: the database knows the store by it."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        return str(uuid.UUID(text))
    except ValueError:  # not a uuid, or not ASCII
        raise BlobStoreError(
            f"{path} is not a local blob store's id file (one uuid): restore it from"
            " a backup of this directory"
        ) from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BlobStoreError(f"cannot read {path}: {e.strerror}") from e


def _makeIdentity(root: str, path: str) -> tuple[str, bool]:
    """A new identity linked into place at C{path}, or the one another
    process linked first; and whether it is ours."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=root)
    except OSError as e:
        raise BlobStoreError(f"cannot write in {root}: {e.strerror}") from e
    try:
        storeId = str(uuid.uuid4())
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(storeId + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _readIdentity(path), False
        _fsyncDirectory(root)
        return storeId, True
    except OSError as e:
        raise BlobStoreError(f"cannot make the id file {path}: {e.strerror}") from e
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
