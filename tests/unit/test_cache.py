"""
What a node keeps of what it serves (L{RecordCache}, L{BlobCache}): a
record only while the database's changes are heard, for ten seconds at
most, never across a change; a small blob while there is room.  Through
the routes: what another node changed is served anew once its change is
heard, what this node changes at once, and a change is always checked
against the database, never against what was kept.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from morpheo._types import StoredObject
from morpheo.objects import BlobCache, RecordCache, Replacement
from morpheo.objects._cache import LARGEST_BLOB, RECORD_LIFETIME

from .harness import FORM_TYPE, Bytes, Service, form, newUUID, put


def record(kind: str = "data", uuid: str | None = None) -> StoredObject:
    return StoredObject(
        kind=kind,
        uuid=uuid or newUUID(),
        timestamp_upload=0,
        size=3,
        sha256="0" * 64,
        blob_key=f"{kind}/key",
    )


@pytest.fixture
def heard() -> tuple[Clock, RecordCache]:
    clock = Clock()
    records = RecordCache(clock)
    records.listening()
    return clock, records


def test_aRecordReadIsKeptWhileTheChangesAreHeard(heard: tuple[Clock, RecordCache]) -> None:
    _, records = heard
    found = record()
    records.keep(found, records.mark())
    assert records.get("data", found.uuid) == found
    assert records.get("algo", found.uuid) is None


def test_nothingIsKeptBeforeTheChangesAreHeard() -> None:
    records = RecordCache(Clock())
    found = record()
    records.keep(found, records.mark())
    assert records.get("data", found.uuid) is None
    assert not records.heard


def test_aRecordIsKeptForItsLifetimeAtMost(heard: tuple[Clock, RecordCache]) -> None:
    clock, records = heard
    found = record()
    records.keep(found, records.mark())
    clock.advance(RECORD_LIFETIME - 0.1)
    assert records.get("data", found.uuid) == found
    clock.advance(0.2)
    assert records.get("data", found.uuid) is None


def test_aChangeHeardDuringAReadKeepsItsRecordOut(heard: tuple[Clock, RecordCache]) -> None:
    """The change may be this very record's, told before its read came back."""
    _, records = heard
    found = record()
    mark = records.mark()
    records.changed("data", found.uuid)
    records.keep(found, mark)
    assert records.get("data", found.uuid) is None
    records.keep(found, records.mark())
    assert records.get("data", found.uuid) == found


def test_aChangeForgetsItsRecordOnly(heard: tuple[Clock, RecordCache]) -> None:
    _, records = heard
    one, other = record(), record()
    for r in (one, other):
        records.keep(r, records.mark())
    records.changed("data", one.uuid)
    assert records.get("data", one.uuid) is None
    assert records.get("data", other.uuid) == other


def test_deafForgetsAllAndKeepsNothingUntilHeardAgain(heard: tuple[Clock, RecordCache]) -> None:
    """What changes while the link is away is never told: nothing kept can be trusted."""
    _, records = heard
    before, during = record(), record()
    mark = records.mark()
    records.keep(before, mark)
    records.deaf()
    assert records.get("data", before.uuid) is None
    records.keep(during, records.mark())
    assert records.get("data", during.uuid) is None
    records.keep(before, mark)  # a read begun before the link broke
    assert records.get("data", before.uuid) is None
    records.listening()
    records.keep(during, records.mark())
    assert records.get("data", during.uuid) == during


def test_recordsAreBoundedInNumber() -> None:
    records = RecordCache(Clock(), size=2)
    records.listening()
    kept = [record() for _ in range(3)]
    for r in kept:
        records.keep(r, records.mark())
    assert [records.get("data", r.uuid) is not None for r in kept].count(True) == 2
    assert records.get("data", kept[-1].uuid) == kept[-1]


def test_blobsAreBoundedInBytesTheLeastRecentlyReadGoingFirst() -> None:
    blobs = BlobCache(3000)
    for key in "abc":
        blobs.keep(key, key.encode() * 1000)
    assert blobs.get("a") == b"a" * 1000
    blobs.keep("d", b"d" * 1000)
    assert (blobs.get("a"), blobs.get("b")) == (b"a" * 1000, None)
    assert blobs.get("d") == b"d" * 1000


def test_aBlobLargerThanTheLargestIsNotKept() -> None:
    blobs = BlobCache(10 * LARGEST_BLOB)
    assert blobs.fits(LARGEST_BLOB) and not blobs.fits(LARGEST_BLOB + 1)
    blobs.keep("big", bytes(LARGEST_BLOB + 1))
    assert blobs.get("big") is None
    assert not BlobCache(100).fits(101)


# Through the routes


@pytest.fixture
def node() -> Service:
    return Service(cache=True)


def reads(node: Service, cache: str) -> dict[str, float]:
    """The node's reads of C{cache} counted so far, by outcome."""
    registry = node.metrics.registry
    return {
        outcome: registry.get_sample_value(
            "morpheo_cache_reads_total", {"cache": cache, "outcome": outcome}
        )
        or 0.0
        for outcome in ("hit", "miss")
    }


def name(node: Service, kind: str, uuid: str) -> str:
    reply = node.request("GET", f"/{kind}/{uuid}")
    assert reply.code == 200, reply.body
    value: str = reply.json()["name"]
    return value


def test_whatAnotherNodeChangedIsServedAnewOnceItsChangeIsHeard(node: Service) -> None:
    """
    The change is made through another node: the record this node kept
    stands until the database tells of the change.
    """
    uuid = node.stored("problem", name="before")["uuid"]
    assert name(node, "problem", uuid) == "before"
    other = node.otherNode()
    current = node.run(other.current("problem", uuid))
    node.run(other.replace(current, Replacement(text={"name": "after"}), Bytes(b"")))
    assert name(node, "problem", uuid) == "before"
    assert node.records is not None
    node.records.changed("problem", uuid)
    assert name(node, "problem", uuid) == "after"


def test_whatThisNodeDeletesIsGoneAtOnce(node: Service) -> None:
    blob = os.urandom(1000)
    uuid = node.stored("data", blob)["uuid"]
    assert node.request("GET", f"/data/{uuid}/blob").body == blob
    assert node.request("DELETE", f"/data/{uuid}").code == 200
    assert node.request("GET", f"/data/{uuid}").code == 404
    assert node.request("GET", f"/data/{uuid}/blob").code == 404


def test_whatThisNodePatchesIsServedAtOnce(node: Service) -> None:
    uuid = node.stored("problem", name="before")["uuid"]
    assert name(node, "problem", uuid) == "before"
    body = form({"name": "after"})
    reply = node.request("PATCH", f"/problem/{uuid}", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 200, reply.body
    assert name(node, "problem", uuid) == "after"


def test_aChangeIsCheckedAgainstTheDatabaseNotAgainstWhatWasKept(node: Service) -> None:
    """
    Another node deleted the object and stored another blob under its
    uuid; this node, not told yet, still keeps the old record, yet a
    DELETE conditional on the old blob's ETag is refused: the new object
    stays.
    """
    uuid = newUUID()
    old = node.stored("data", b"old blob", uuid=uuid)
    assert node.request("GET", f"/data/{uuid}").json() == old
    other = node.otherNode()
    node.run(other.remove("data", uuid))
    new = put(node, "data", b"new blob", through=other, uuid=uuid)
    assert node.request("GET", f"/data/{uuid}").json() == old
    reply = node.request("DELETE", f"/data/{uuid}", headers={"If-Match": f'"{old["sha256"]}"'})
    assert reply.code == 412, reply.body
    assert node.run(other.current("data", uuid)) == new


def test_aSmallBlobReadOnceIsServedWithoutItsStore(node: Service) -> None:
    blob = os.urandom(5000)
    uuid = node.stored("data", blob)["uuid"]
    assert node.request("GET", f"/data/{uuid}/blob").body == blob
    node.blobs.down = True
    assert node.request("GET", f"/data/{uuid}/blob").body == blob
    assert reads(node, "blobs") == {"hit": 1, "miss": 1}
    assert reads(node, "records") == {"hit": 1, "miss": 1}
    part = node.request("GET", f"/data/{uuid}/blob", headers={"Range": "bytes=100-199"})
    assert (part.code, part.body) == (206, blob[100:200])
    assert node.request("HEAD", f"/data/{uuid}/blob").code == 200


def test_aBlobLargerThanTheLargestKeptIsReadFromItsStoreEachTime(node: Service) -> None:
    blob = os.urandom(LARGEST_BLOB + 1)
    uuid = node.stored("data", blob)["uuid"]
    assert node.request("GET", f"/data/{uuid}/blob").body == blob
    node.blobs.down = True
    reply = node.request("GET", f"/data/{uuid}/blob")
    assert (reply.code, reply.error) == (500, "the blob store (mock) failed; try again later")
