"""
The sweep of unreferenced blobs in a running service, on each blob store
for real (the local disk, S3 on SeaweedFS, Google Cloud Storage on
fake-gcs-server): with a short C{--orphan-grace}, an object written straight
into the store under a key of the service's shape, with no row, is gone
within seconds, while uploads and replacements go on and every uploaded
object stays readable, and what is not the service's stays untouched.

Each server has a bucket of its own: a sweep takes every key of the
service's shape that its database does not know for an orphan, so a
bucket shared with another service's database would lose that one's blobs.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from attrs import define
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import deferLater
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from morpheo.blobstores._bodies import Unpausable
from tests.integration.helpers import (
    download,
    eventually,
    form,
    jsonOf,
    sendForm,
    upload,
    uploadFields,
)
from tests.integration.servers import FakeGCS, SeaweedFS, Server, startServer

MiB = 1024 * 1024
GRACE = "2"


@define
class Sweeping:
    """A server sweeping with a grace of 2 s, and its store seen from outside."""

    server: Server
    #: Write an object straight into the store, as another program would.
    put: Callable[[str, bytes], None]
    #: Every key the store holds.
    keys: Callable[[], list[str]]


def _local(tmp_path: Path) -> Sweeping:
    server = startServer(str(tmp_path / "data"), "--orphan-grace", GRACE)

    def put(key: str, data: bytes) -> None:
        path = Path(server.blobDir, *key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Sweeping(server, put, server.files)


@pytest.fixture(params=["local", "s3", "gc"])
def sweeping(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sweeping]:
    if request.param == "local":
        made = _local(tmp_path)
    else:
        store: SeaweedFS | FakeGCS = request.getfixturevalue(
            "seaweedfs" if request.param == "s3" else "fakeGCS"
        )
        bucket = f"sweep-{uuid.uuid4().hex[:20]}"
        store.createBucket(bucket)
        server = startServer(
            str(tmp_path / "data"),
            *store.serverArgs(bucket),
            "--orphan-grace", GRACE,
            env=store.serverEnv(),
        )  # fmt: skip
        made = Sweeping(
            server,
            lambda key, data: store.putObject(key, data, bucket),
            lambda: sorted(store.objects(bucket=bucket)),
        )
    try:
        yield made
    finally:
        made.server.stop()


@implementer(IBodyProducer)
class SlowBody(Unpausable):
    """A request body sent in two halves, C{seconds} apart: an upload in flight meanwhile."""

    def __init__(self, data: bytes, seconds: float) -> None:
        self.data = data
        self.length = len(data)
        self.seconds = seconds

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        half = len(self.data) // 2
        consumer.write(self.data[:half])
        return deferLater(reactor, self.seconds, consumer.write, self.data[half:])


def serviceKey(kind: str = "data") -> str:
    return f"{kind}/{uuid.uuid4()}-{os.urandom(6).hex()}"


@pytest_twisted.ensureDeferred
async def test_a_running_service_sweeps_what_nothing_points_to(
    sweeping: Sweeping, http: HTTPClient
) -> None:
    server = sweeping.server
    blobs: dict[str, bytes] = {}
    for kind in ("data", "problem", "problem"):
        data = os.urandom(1000)
        blobs[f"{kind}/{(await upload(http, server, kind, data))['uuid']}"] = data
    orphans = [serviceKey("data"), serviceKey("problem")]
    others = ["data/readme.txt", f"data/{uuid.uuid4()}", "backups/all.tar"]
    for key in orphans + others:
        sweeping.put(key, b"not pointed to")

    # Over S3's single-PUT size: a multipart upload, in flight across sweeps.
    slow = os.urandom(64 * MiB + 1)
    slowly = sendForm(http, server, "/data", SlowBody(form(*uploadFields("data", slow)), 4.0))
    # Replacements while the sweeps run: in place, and with a new uuid.
    problems = [path for path in blobs if path.startswith("problem/")]
    for path, newUUID in zip(problems, [None, str(uuid.uuid4())], strict=True):
        data = os.urandom(500)
        fields = [("uuid", newUUID)] if newUUID else []
        r = await sendForm(
            http, server, f"/{path}", form(*fields, ("size", str(len(data))), ("blob", data)),
            "PATCH",
        )  # fmt: skip
        assert r.code == 200
        del blobs[path]
        blobs[f"problem/{(await jsonOf(r))['uuid']}"] = data

    def orphansGone() -> None:
        assert not set(orphans) & set(sweeping.keys())

    await eventually(orphansGone, timeout=20)
    r = await slowly
    assert r.code == 201
    blobs[f"data/{(await jsonOf(r))['uuid']}"] = slow
    await deferLater(reactor, 3.0)  # sweeps enough after the last commit

    for path, data in blobs.items():
        code, got = await download(http, server, f"/{path}/blob")
        assert code == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    keys = sweeping.keys()
    assert set(others) <= set(keys)
    assert len(keys) == len(others) + len(blobs)
    assert server.sql("SELECT count(*) FROM resource WHERE state = 'pending'") == [(0,)]
    assert "unreferenced blobs" in server.log()
