"""
The local and memory stores' resumable writes (L{IResumableBlobStore}) on
their own: a write over several appends, a cut append kept, a revoked one
dropped, bytes past the recorded offset cut back, the size checked at the
end, states that name anything else refused, the local file left alone by
the sweep of temporary files and removed by C{cancel}.  (The thread pool's
work is done at once here; the contract suite runs them for real.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from morpheo._errors import BlobStoreError, SizeMismatch
from morpheo._interfaces import IAppender, IResumableBlobStore
from morpheo.blobstores._local import UPLOAD_PREFIX, LocalBlobStore
from morpheo.blobstores._memory import MemoryBlobStore

from .harness import FakeReactor, ImmediatePool

T = TypeVar("T")
KEY = "data/0b4e3a52-5fd2-4fd3-9b4c-3c9b7a1f2e10-0123456789ab"


class Stores:
    """One store under test, and how to let its pending work happen."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.clock = Clock()
        pool: Any = ImmediatePool()
        self.store: LocalBlobStore | MemoryBlobStore
        if kind == "local":
            self.store = LocalBlobStore(str(root), FakeReactor(), pool)
        else:
            self.store = MemoryBlobStore(self.clock)

    def now(self, d: Deferred[T] | Coroutine[Any, Any, T]) -> T:
        outcome: list[Any] = []
        ensureDeferred(d).addBoth(outcome.append)
        self.clock.advance(0)
        assert outcome, "not done at once"
        if hasattr(outcome[0], "raiseException"):
            outcome[0].raiseException()
        result: T = outcome[0]
        return result

    def read(self, key: str) -> bytes:
        if isinstance(self.store, MemoryBlobStore):
            return self.store._blobs[key]
        return Path(self.store.root, *key.split("/")).read_bytes()

    def append(self, state: str, offset: int, data: bytes, keep: bool = True, **kw: Any) -> int:
        appender = self.store.append(KEY, state, offset, **kw)
        for start in range(0, len(data), 1000):
            appender.write(data[start : start + 1000])
        return self.now(appender.close(keep)).offset


@pytest.fixture(params=["local", "memory"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    return Stores(request.param, tmp_path)


def test_theStoresProvideTheInterfaces(stores: Stores) -> None:
    assert verifyObject(IResumableBlobStore, stores.store)
    state = stores.now(stores.store.begin(KEY, 10))
    assert verifyObject(IAppender, stores.store.append(KEY, state, 0))


def test_aWriteOverManyAppendsIsCommittedWhole(stores: Stores) -> None:
    state = stores.now(stores.store.begin(KEY, 9000))
    offset = 0
    for part in (b"a" * 3000, b"b" * 5000, b"c" * 1000):
        offset = stores.append(state, offset, part)
    assert offset == 9000
    with pytest.raises(SizeMismatch):
        stores.now(stores.store.conclude(KEY, state, 9001))
    stores.now(stores.store.conclude(KEY, state, 9000))
    assert stores.read(KEY) == b"a" * 3000 + b"b" * 5000 + b"c" * 1000


def test_aRevokedAppendLeavesTheOffsetAsItWas(stores: Stores) -> None:
    state = stores.now(stores.store.begin(KEY, None))
    assert stores.append(state, 0, b"x" * 100) == 100
    assert stores.append(state, 100, b"y" * 500, keep=False, revocable=True) == 100
    assert stores.append(state, 100, b"z" * 50) == 150
    stores.now(stores.store.conclude(KEY, state, 150))
    assert stores.read(KEY) == b"x" * 100 + b"z" * 50


def test_bytesPastTheRecordedOffsetAreCutBack(stores: Stores) -> None:
    """A request whose new offset never reached the database: its client
    sends those bytes again, from the offset it was told."""
    state = stores.now(stores.store.begin(KEY, None))
    stores.append(state, 0, b"x" * 100)
    stores.append(state, 100, b"lost")
    assert stores.append(state, 100, b"again") == 105
    stores.now(stores.store.conclude(KEY, state, 105))
    assert stores.read(KEY) == b"x" * 100 + b"again"


def test_anAppendPastTheEndIsRefused(stores: Stores) -> None:
    state = stores.now(stores.store.begin(KEY, 10))
    appender = stores.store.append(KEY, state, 0, end=10)
    appender.write(b"x" * 8)
    with pytest.raises(SizeMismatch):
        appender.write(b"x" * 3)
    assert stores.now(appender.close(True)).offset == 8


def test_aStateNamingSomethingElseIsRefused(stores: Stores) -> None:
    for state in ("", "{}", json.dumps({"file": "../../etc/passwd"}), json.dumps({"write": 3})):
        with pytest.raises(BlobStoreError):
            stores.store.append(KEY, state, 0)
        with pytest.raises(BlobStoreError):
            stores.now(stores.store.cancel(KEY, state))


def test_cancelRemovesEverythingAndCanBeRepeated(stores: Stores) -> None:
    state = stores.now(stores.store.begin(KEY, None))
    stores.append(state, 0, b"x" * 100)
    stores.now(stores.store.cancel(KEY, state))
    stores.now(stores.store.cancel(KEY, state))
    with pytest.raises(BlobStoreError):
        stores.now(stores.store.conclude(KEY, state, 100))
    if isinstance(stores.store, MemoryBlobStore):
        assert stores.store.openWrites() == {}
    else:
        assert os.listdir(os.path.join(stores.store.root, "data")) == []


def test_theLocalFileIsNeitherATemporaryFileNorABlob(tmp_path: Path) -> None:
    stores = Stores("local", tmp_path)
    store = stores.store
    assert isinstance(store, LocalBlobStore)
    state = stores.now(store.begin(KEY, None))
    stores.append(state, 0, b"x" * 100)
    (name,) = os.listdir(tmp_path / "data")
    assert name.startswith(UPLOAD_PREFIX)
    assert stores.now(store.sweepTemporary(0)) == []

    async def keys() -> list[str]:
        return [k async for page in store.listKeys() for k in page]

    assert stores.now(keys()) == []
    assert os.listdir(tmp_path / "data") == [name]


def test_aDownStoreFailsTheAppend() -> None:
    stores = Stores("memory", Path("."))
    store = stores.store
    assert isinstance(store, MemoryBlobStore)
    state = stores.now(store.begin(KEY, None))
    appender = store.append(KEY, state, 0)
    appender.write(b"x")
    store.down = True
    with pytest.raises(BlobStoreError):
        stores.now(appender.close(True))
    store.down = False
    assert store.openWrites() == {json.loads(state)["write"]: 0}


def test_aLocalFileNoUploadKnowsIsSweptOnceSurelyExpired(tmp_path: Path) -> None:
    stores = Stores("local", tmp_path)
    store = stores.store
    assert isinstance(store, LocalBlobStore)
    state = stores.now(store.begin(KEY, None))
    stores.append(state, 0, b"x" * 10)
    (name,) = os.listdir(tmp_path / "data")
    path = tmp_path / "data" / name
    old = path.stat().st_mtime - 1000
    os.utime(path, (old, old))
    assert stores.now(store.sweepTemporary(0)) == []
    store.uploadLifetime = 2000
    assert stores.now(store.sweepTemporary(0)) == []
    # A request of no bytes says the upload is at work too.
    stores.append(state, 10, b"")
    store.uploadLifetime = 500
    assert stores.now(store.sweepTemporary(0)) == []
    os.utime(path, (old, old))
    assert stores.now(store.sweepTemporary(0)) == [str(path)]
