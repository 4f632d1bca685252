"""
How many trips to the thread pool the local store makes: a small blob is
read in one (open, read, close), and written in one (open, write, fsync,
rename), its digest computed in place; a large one still streams in steps.
The pool here runs its work at once and counts it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from morpheo.blobstores import LocalBlobStore
from tests.unit.harness import FakeReactor, ImmediatePool


class CountingPool(ImmediatePool):
    def __init__(self) -> None:
        self.trips = 0

    def callInThreadWithCallback(self, *args: Any, **kwargs: Any) -> None:
        self.trips += 1
        super().callInThreadWithCallback(*args, **kwargs)


def _store(tmp_path: Path) -> tuple[LocalBlobStore, CountingPool]:
    pool = CountingPool()
    return LocalBlobStore(str(tmp_path), FakeReactor(), pool), pool  # type: ignore[arg-type]


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired"
    return results[0]


def _write(store: LocalBlobStore, key: str, data: bytes) -> Any:
    writer = store.writer(key, len(data))
    for start in range(0, len(data), 65536):
        writer.write(data[start : start + 65536])
    return _result(writer.finish())


def test_a_small_blob_is_written_in_one_trip(tmp_path: Path) -> None:
    store, pool = _store(tmp_path)
    data = os.urandom(4096)
    info = _write(store, "data/small", data)
    assert pool.trips == 1
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert (tmp_path / "data" / "small").read_bytes() == data


def test_a_large_blob_streams_in_steps(tmp_path: Path) -> None:
    store, pool = _store(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 5)
    info = _write(store, "data/large", data)
    assert pool.trips > 2
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "data" / "large").read_bytes() == data


def test_a_small_blob_is_read_in_one_trip(tmp_path: Path) -> None:
    store, pool = _store(tmp_path)
    data = os.urandom(4096)
    _write(store, "data/small", data)
    pool.trips = 0
    consumer = StringTransport()
    assert _result(store.produce("data/small", consumer)) is None
    assert consumer.value() == data and pool.trips == 1
    consumer = StringTransport()
    assert _result(store.produce("data/small", consumer, 100, 50)) is None
    assert consumer.value() == data[100:150]


def test_a_blob_shorter_than_asked_fails(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    _write(store, "data/small", b"abc")
    failure = _result(store.produce("data/small", StringTransport(), 0, 10))
    assert "ended before its length" in str(failure.value)
