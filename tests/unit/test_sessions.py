"""
Uploads to a store that keeps, while a write runs, a session only its
handle finds (a Google Cloud Storage resumable session, played here by the
memory blob store with C{sessions}): the handle is recorded in the claim as
soon as the store has it, at no cost to writes that have none; a killed
node's session is cancelled by the sweep of another node, which passes the
recorded handle to the store's C{abandon}; a record that fails does not
fail the upload.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.logger import capturedLogs

from morpheo.blobstores import MemoryBlobStore
from morpheo.blobstores._gcs import GCSBlobStore
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import IncomingBlob, NewObject, Objects, Sweeper

from .harness import (
    END,
    FORM_TYPE,
    FakeReactor,
    ImmediatePool,
    Service,
    Trickle,
    fieldsFor,
    form,
    newUUID,
    request,
)

BLOB = b"x" * 1000


class CountingNotes(MemoryMetadataStore):
    """A memory store that keeps the handles it was asked to record, in order."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.notes: list[str] = []

    async def noteUpload(self, kind: str, uuid: str, token: str, handle: str) -> None:
        self.notes.append(handle)
        await super().noteUpload(kind, uuid, token, handle)


def node(service: Service, metadata: MemoryMetadataStore, blobs: MemoryBlobStore) -> Objects:
    """Another node's domain layer, on the service's clock."""
    return Objects(
        metadata,
        blobs,
        reactor=service.reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
        claimLease=service.claimLease,
    )


def test_theHandleIsRecordedInTheClaimAsSoonAsTheStoreHasIt() -> None:
    service = Service(sessions=True)
    uuid = newUUID()
    connection = service.startUpload("data", uuid, BLOB)
    [(handle, key)] = service.blobs.openSessions().items()
    assert key.startswith(f"data/{uuid}-")
    assert service.metadata.uploadHandles() == {("data", uuid): handle}

    body = form(fieldsFor("data", BLOB, uuid=uuid), BLOB)
    assert b"201 Created" in connection.send(body[-len(END) - 100 :])
    # Completed: the session is over, and the row keeps no handle.
    assert service.blobs.openSessions() == {}
    assert service.metadata.uploadHandles() == {}
    assert service.rows() == [("data", uuid, "ready")]


@pytest.mark.parametrize("sessions", [False, True])
def test_aWriteWithoutAHandleCostsNoCall(service: Service, sessions: bool) -> None:
    """A local or memory write has no handle: its upload makes no extra database call."""
    metadata = CountingNotes(service.reactor, owner="counting")
    blobs = MemoryBlobStore(service.reactor, sessions=sessions)
    objects = node(service, metadata, blobs)
    stored = service.run(objects.put(NewObject("data", IncomingBlob(3)), Trickle(b"abc")))
    assert stored.size == 3
    assert metadata.notes == (["mock-session:1"] if sessions else [])


def test_aKilledNodesSessionIsCancelledBySweepOfAnotherWithinTwoLeases() -> None:
    service = Service(claimLease=9.0, sessions=True)
    killed = node(service, service.metadata.sibling("killed"), service.blobs)
    uuid = newUUID()
    # Part of its blob sent, then the node is gone: nothing of it runs again.
    new = NewObject("data", IncomingBlob(len(BLOB)), uuid=uuid)
    ensureDeferred(killed.put(new, Trickle(BLOB[:10], rest=BLOB[10:])))
    service.settle()
    [(handle, key)] = service.blobs.openSessions().items()
    assert service.metadata.uploadHandles() == {("data", uuid): handle}

    sweeper = Sweeper(service.objects, service.reactor)
    sweeper.startService()
    try:
        for _ in range(6):
            service.advance(sweeper.interval)
    finally:
        sweeper.stopService()
    # The store cancels a session only when given its handle.
    assert service.blobs.openSessions() == {}
    assert service.rows() == []
    assert service.stored("data", BLOB, uuid=uuid)["uuid"] == uuid
    assert service.blobKeys() != [key]


def test_theStoreCancelsOnlyItsOwnSessionOfTheKey() -> None:
    service = Service(sessions=True)
    service.startUpload("data", newUUID(), BLOB)
    [(handle, key)] = service.blobs.openSessions().items()
    for wrong in [(key, "mock-session:999"), ("data/another-key", handle)]:
        service.run(service.blobs.abandon(*wrong))
        assert service.blobs.openSessions() == {handle: key}
    service.run(service.blobs.abandon(key, handle))
    assert service.blobs.openSessions() == {}


def test_aRecordThatFailsDoesNotFailTheUpload() -> None:
    """The database fails just as the session opens: logged, and the upload goes on."""
    service = Service(sessions=True)
    uuid = newUUID()
    body = form(fieldsFor("data", BLOB, uuid=uuid), BLOB)
    raw = request("POST", "/data", {"Content-Type": FORM_TYPE}, body)
    head = raw[: raw.index(BLOB)]
    connection = service.connect()
    connection.send(head)
    assert service.rows() == [("data", uuid, "pending")]
    assert service.blobs.openSessions() == {}

    service.metadata.goDown("the metadata database is not connected")
    with capturedLogs() as events:
        connection.send(BLOB[:10])
    service.metadata.comeBack()
    [failed] = [e for e in events if "recording the upload" in e.get("log_format", "")]
    assert (failed["kind"], failed["uuid"]) == ("data", uuid)
    assert len(service.blobs.openSessions()) == 1
    assert service.metadata.uploadHandles() == {}

    assert b"201 Created" in connection.send(raw[len(head) + 10 :])
    assert service.rows() == [("data", uuid, "ready")]
    assert service.blobs.openSessions() == {}


def test_aClientGoneEndsItsSessionAndReleasesTheClaim() -> None:
    service = Service(sessions=True)
    connection = service.startUpload("data", newUUID(), BLOB)
    assert len(service.blobs.openSessions()) == 1
    connection.close()
    assert service.blobs.openSessions() == {}
    service.assertNothingLeft()


KEY = "data/1f01d777-c3f4-4bdd-9c4a-8388860e4c5e-0123456789ab"
NAME = "data%2F1f01d777-c3f4-4bdd-9c4a-8388860e4c5e-0123456789ab"
OWN = f"http://127.0.0.1:4443/upload/storage/v1/b/morpheo/o?uploadType=resumable&name={NAME}"


@pytest.mark.parametrize(
    ("endpoint", "url", "own"),
    [
        ("http://127.0.0.1:4443", f"{OWN}&upload_id=abc", True),
        ("http://127.0.0.1:4443/", f"{OWN}&upload_id=abc", True),
        (
            "http://127.0.0.1:4443",
            "http://127.0.0.1:4443/upload/storage/v1/b/morpheo/o?upload_id=a",
            True,
        ),
        (None, "https://storage.googleapis.com/upload/storage/v1/b/morpheo/o?upload_id=a", True),
        (
            None,
            "https://STORAGE.googleapis.com:443/upload/storage/v1/b/morpheo/o?upload_id=a",
            True,
        ),
        (
            "http://gcs.internal/prefix",
            "http://gcs.internal:80/prefix/upload/storage/v1/b/morpheo/o?upload_id=a",
            True,
        ),
        # Not a session of this store's: never called.
        ("http://127.0.0.1:4443", OWN, False),
        ("http://127.0.0.1:4443", f"{OWN}&upload_id=a&upload_id=b", False),
        ("http://127.0.0.1:4443", f"{OWN.replace(NAME, 'data%2Fanother')}&upload_id=a", False),
        ("http://127.0.0.1:4443", f"{OWN.replace(':4443', ':4444')}&upload_id=a", False),
        ("http://127.0.0.1:4443", f"{OWN.replace('http:', 'https:')}&upload_id=a", False),
        ("http://127.0.0.1:4443", f"{OWN.replace('127.0.0.1', 'evil.example')}&upload_id=a", False),
        (
            "http://127.0.0.1:4443",
            f"{OWN.replace('127.0.0.1:4443', 'u:p@127.0.0.1:4443')}&upload_id=a",
            False,
        ),
        (
            "http://127.0.0.1:4443",
            f"{OWN.replace('127.0.0.1:4443', '127.0.0.1:4443@evil.example')}&upload_id=a",
            False,
        ),
        (
            "http://127.0.0.1:4443",
            f"{OWN.replace('/b/morpheo/', '/b/another/')}&upload_id=a",
            False,
        ),
        (
            "http://127.0.0.1:4443",
            f"http://127.0.0.1:4443/storage/v1/b/morpheo/o/{NAME}?upload_id=a",
            False,
        ),
        ("http://127.0.0.1:4443", f"{OWN}&upload_id=a#fragment", False),
        ("http://127.0.0.1:4443", f"{OWN}&upload_id=a b", False),
        ("http://127.0.0.1:4443", f"{OWN}&upload_id=a\r\nX-Evil: 1", False),
        ("http://127.0.0.1:4443", f"{OWN}&upload_id=é", False),
        (
            "http://127.0.0.1:4443",
            "http://127.0.0.1:99999/upload/storage/v1/b/morpheo/o?upload_id=a",
            False,
        ),
        ("http://127.0.0.1:4443", "/upload/storage/v1/b/morpheo/o?upload_id=a", False),
        (None, "http://storage.googleapis.com/upload/storage/v1/b/morpheo/o?upload_id=a", False),
        (
            "http://gcs.internal/prefix",
            "http://gcs.internal/upload/storage/v1/b/morpheo/o?upload_id=a",
            False,
        ),
    ],
)
def test_onlySessionsOfTheStoresBucketOnItsEndpointAreItsOwn(
    endpoint: str | None, url: str, own: bool
) -> None:
    """A handle read back from the database is called only if it is one of the store's sessions."""
    store = GCSBlobStore(
        "morpheo",
        FakeReactor(),
        ImmediatePool(),  # type: ignore[arg-type]
        endpoint=endpoint,
        credentials=object(),
    )
    assert store.ownSession(KEY, url) is own
