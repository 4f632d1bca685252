"""
The local store's shared directory fsyncs (L{DirectorySyncs}): each caller
returns only after an fsync begun after it asked, callers waiting together
share one, and a failure is its caller's alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from morpheo.blobstores import _local
from morpheo.blobstores._local import DirectorySyncs


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], threading.Event]]:
    """The real fsyncs, told as they begin and end; each held until the event is set."""
    told: list[str] = []
    going = threading.Event()
    real = _local._fsyncDirectory

    def fsync(path: str) -> None:
        told.append("begin")
        going.wait(10)
        real(path)
        told.append("end")

    monkeypatch.setattr(_local, "_fsyncDirectory", fsync)
    yield told, going
    going.set()


def test_callersWaitingTogetherShareTheNextFsync(
    tmp_path: Path, watched: tuple[list[str], threading.Event]
) -> None:
    told, going = watched
    syncs = DirectorySyncs()
    first = threading.Thread(target=syncs.sync, args=(str(tmp_path),))
    first.start()
    while told != ["begin"]:
        first.join(0.01)
    # These ask while the first fsync runs: it began before they asked,
    # so it cannot answer them; the next one answers them all.
    later = [threading.Thread(target=syncs.sync, args=(str(tmp_path),)) for _ in range(5)]
    for t in later:
        t.start()
    going.set()
    for t in [first, *later]:
        t.join(10)
        assert not t.is_alive()
    assert told == ["begin", "end", "begin", "end"]


def test_aCallerAloneGetsAnFsyncOfItsOwn(
    tmp_path: Path, watched: tuple[list[str], threading.Event]
) -> None:
    told, going = watched
    going.set()
    syncs = DirectorySyncs()
    syncs.sync(str(tmp_path))
    syncs.sync(str(tmp_path))
    assert told == ["begin", "end"] * 2


def test_aFailedFsyncIsItsCallersAndTheNextCallerTriesAgain(tmp_path: Path) -> None:
    syncs = DirectorySyncs()
    gone = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        syncs.sync(str(gone))
    gone.mkdir()
    syncs.sync(str(gone))
