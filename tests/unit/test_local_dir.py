"""
The local store's directory on its own (real files under the test's
directory, the thread pool's work done at once): the id file that says
which store it is, the lock that keeps it one node's unless every node
shares it, and what a start-up sweep leaves in a shared one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred, ensureDeferred

from morpheo._errors import BlobNotFound, BlobStoreError
from morpheo.blobstores._local import ID_FILE, TEMP_PREFIX, LocalBlobStore, _makeIdentity
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import blobKey, sweep
from morpheo.service._datadir import BLOB_DIR_LOCK, BlobDirInUse, BlobDirLock

from .harness import FakeReactor, ImmediatePool

T = TypeVar("T")


def store(root: Path, shared: bool = False) -> LocalBlobStore:
    pool: Any = ImmediatePool()
    return LocalBlobStore(str(root), FakeReactor(), pool, shared=shared)


def now(d: Deferred[T] | Coroutine[Any, Any, T]) -> T:
    """The result of work that, in this tier, is done as soon as it is asked for."""
    outcome: list[Any] = []
    ensureDeferred(d).addBoth(outcome.append)
    assert outcome, "not done at once"
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    result: T = outcome[0]
    return result


def blob(root: Path, key: str, data: bytes = b"blob") -> None:
    path = root.joinpath(*key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# The id file


def test_aDirectoryGetsItsIdentityOnceAndKeepsIt(tmp_path: Path) -> None:
    """The identity is the directory's: any store opened on it (another node's) reads it."""
    first = now(store(tmp_path).identify())
    assert first.new and str(uuid.UUID(first.storeId)) == first.storeId
    again = now(store(tmp_path, shared=True).identify())
    assert (again.storeId, again.new) == (first.storeId, False)
    assert (tmp_path / ID_FILE).read_text() == first.storeId + "\n"
    assert sorted(os.listdir(tmp_path)) == [ID_FILE]  # nothing left aside


def test_ofTwoNodesMakingTheIdentityAtOnceTheFirstWins(tmp_path: Path) -> None:
    """The loser of the link reads the winner's id, and leaves nothing behind."""
    winner = now(store(tmp_path).identify()).storeId
    assert _makeIdentity(str(tmp_path), str(tmp_path / ID_FILE)) == (winner, False)
    assert os.listdir(tmp_path) == [ID_FILE]


@pytest.mark.parametrize("content", ["", "not a uuid\n", "\xff"])
def test_anIdFileThatIsNoneIsRefusedNotReplaced(tmp_path: Path, content: str) -> None:
    (tmp_path / ID_FILE).write_text(content, encoding="latin-1")
    with pytest.raises(BlobStoreError, match="is not a local blob store's id file"):
        now(store(tmp_path).identify())
    assert (tmp_path / ID_FILE).read_text(encoding="latin-1") == content


def test_theIdFileAndTheLockAreNeitherBlobsNorLeftovers(tmp_path: Path) -> None:
    local = store(tmp_path)
    now(local.identify())
    lock = BlobDirLock(str(tmp_path), shared=False)
    lock.acquire()

    async def keys() -> list[str]:
        return [key async for page in local.listKeys() for key in page]

    try:
        key = blobKey("data", str(uuid.uuid4()))
        blob(tmp_path, key)
        assert now(keys()) == [key]
        assert now(local.sweepTemporary()) == []
        assert sorted(os.listdir(tmp_path)) == sorted([ID_FILE, BLOB_DIR_LOCK, "data"])
    finally:
        lock.release()


# What a HEAD asks


def test_statGivesTheSizeOrBlobNotFound(tmp_path: Path) -> None:
    local = store(tmp_path)
    blob(tmp_path, "data/there", b"12345")
    assert now(local.stat("data/there")) == 5
    with pytest.raises(BlobNotFound):
        now(local.stat("data/gone"))


# The lock


def lockOf(root: Path, shared: bool) -> BlobDirLock:
    lock = BlobDirLock(str(root), shared)
    lock.acquire()
    return lock


def test_aNodeKeepingTheDirectoryKeepsEveryOtherOut(tmp_path: Path) -> None:
    held = lockOf(tmp_path, shared=False)
    try:
        for shared in (False, True):
            with pytest.raises(BlobDirInUse) as refused:
                lockOf(tmp_path, shared)
            assert f"pid {os.getpid()} on " in str(refused.value)
            assert "--shared-blob-dir" in str(refused.value)
    finally:
        held.release()
    lockOf(tmp_path, shared=False).release()  # released: free again


def test_nodesSharingTheDirectoryKeepOutANodeThatWouldKeepIt(tmp_path: Path) -> None:
    first, second = lockOf(tmp_path, shared=True), lockOf(tmp_path, shared=True)
    try:
        with pytest.raises(BlobDirInUse) as refused:
            lockOf(tmp_path, shared=False)
        assert str(refused.value) == (
            f"{tmp_path} is in use by nodes started with --shared-blob-dir: one node per"
            " blob directory, unless every node on it is started with --shared-blob-dir"
        )
    finally:
        first.release()
        second.release()


# The start-up sweep


@pytest.mark.parametrize("shared", [False, True])
def test_aSharedDirectorysYoungLeftoversAreNotTakenForOurOwnAtStart(
    tmp_path: Path, shared: bool
) -> None:
    """
    In a directory of our own, what is unfinished at start is a dead run's;
    in a shared one, a young temporary file may be another node's upload,
    a young unreferenced blob another node's replacement about to be
    pointed to: only age tells.
    """
    orphan = blobKey("data", str(uuid.uuid4()))
    blob(tmp_path, f"data/{TEMP_PREFIX}upload-in-flight")
    blob(tmp_path, orphan)
    metadata = MemoryMetadataStore(FakeReactor(), owner="starting")
    swept = now(sweep(metadata, store(tmp_path, shared), atStart=True))
    left = sorted(os.listdir(tmp_path / "data"))
    if shared:
        assert not swept
        assert left == sorted([f"{TEMP_PREFIX}upload-in-flight", orphan.split("/")[1]])
    else:
        assert (swept.temporary, swept.orphans) == (1, 1)
        assert left == []
