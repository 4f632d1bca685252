"""
C{morpheo-storage-client} against a real server (twistd, embedded
PostgreSQL, local blobs), run as a user runs it: the installed command, in
a subprocess, its credentials from the environment or a netrc file.
Downloads are cut for real by a TCP proxy that closes the connection
mid-body; progress is looked for on a pseudo-terminal and in a pipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import socket
import subprocess
import sys
import uuid as uuids
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import RecordingProxy, SeaweedFS, Server, startServer

CLIENT = os.path.join(os.path.dirname(sys.executable), "morpheo-storage-client")


def clientEnv(server: Server, url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user of C{server}: its URL and login in the three variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORPHEO_STORAGE_")}
    env.update(
        MORPHEO_STORAGE_URL=url or server.url,
        MORPHEO_STORAGE_USER=server.user,
        MORPHEO_STORAGE_PASSWORD=server.password,
    )
    env.update(extra)
    return env


def client(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The command, its output piped."""
    return subprocess.run(
        [CLIENT, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def ok(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    done = client(env, *args, cwd=cwd)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def blobFile(path: Path, size: int) -> str:
    """A file of C{size} random bytes at C{path}; its sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def fail(done: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    """The command failed with C{code} and one line on stderr saying C{words}."""
    assert done.returncode == code, done
    assert done.stderr.startswith("morpheo-storage-client: "), done
    assert done.stderr.count("\n") == 1 and words in done.stderr, done
    assert "Traceback" not in done.stderr


class CuttingProxy(RecordingProxy):
    """
    A L{RecordingProxy} that closes its first C{cuts} connections once
    C{cutAfter} bytes of the answers (or of the requests, with
    C{requests}) have gone through them: a download (or an upload) cut
    short, for real, mid-body.
    """

    def __init__(self, target: int, cutAfter: int, cuts: int = 1, requests: bool = False) -> None:
        super().__init__(target)
        self.url = self.endpoint
        self.requests = requests
        self.cutAfter = cutAfter
        self.cuts = cuts

    def _limits(self) -> tuple[int | None, int | None]:
        limit = self.cutAfter if self.cuts > 0 else None
        self.cuts -= 1
        return (limit, None) if self.requests else (None, limit)

    def __enter__(self) -> CuttingProxy:
        super().__enter__()
        return self


@pytest.fixture
def env(server: Server) -> dict[str, str]:
    return clientEnv(server)


def test_upload_show_patch_download_delete(env, server, tmp_path):
    sha = blobFile(tmp_path / "problem.tar.gz", 300_000)
    name = f"client-{uuids.uuid4().hex}"
    uuid = ok(
        env,
        "upload",
        "problem",
        str(tmp_path / "problem.tar.gz"),
        "--name",
        name,
        "--description",
        "great",
    ).strip()
    shown = json.loads(ok(env, "show", "problem", uuid, "--json"))
    assert (shown["uuid"], shown["name"], shown["description"]) == (uuid, name, "great")
    assert (shown["size"], shown["sha256"]) == (300_000, sha)
    assert f"sha256: {sha}\n" in ok(env, "show", "problem", uuid)

    renamed = str(uuids.uuid4())
    sha2 = blobFile(tmp_path / "new.tar.gz", 1000)
    patched = json.loads(
        ok(
            env,
            "--json",
            "patch",
            "problem",
            uuid,
            "--uuid",
            renamed,
            "--description",
            "greater",
            "--file",
            str(tmp_path / "new.tar.gz"),
        )
    )
    assert (patched["uuid"], patched["description"], patched["sha256"]) == (
        renamed,
        "greater",
        sha2,
    )
    assert ok(env, "patch", "problem", renamed, "--name", name + "-2") == renamed + "\n"

    out = ok(env, "download", "problem", renamed, "-o", str(tmp_path / "copy"))
    assert out == f"{tmp_path / 'copy'}\n"
    assert (tmp_path / "copy").read_bytes() == (tmp_path / "new.tar.gz").read_bytes()
    # Without -o: the uuid, where it runs.
    ok(env, "download", "problem", renamed, cwd=tmp_path)
    assert hashlib.sha256((tmp_path / renamed).read_bytes()).hexdigest() == sha2
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".part") == []

    assert ok(env, "delete", "problem", renamed) == renamed + "\n"
    fail(client(env, "show", "problem", renamed), 2, f"there is no problem {renamed}")
    fail(client(env, "show", "problem", uuid), 2, "there is no problem")
    fail(client(env, "download", "problem", renamed, "-o", str(tmp_path / "gone")), 2, "no problem")
    assert not (tmp_path / "gone").exists() and not (tmp_path / "gone.part").exists()


def test_algo_model_and_their_rules(env, server, tmp_path):
    sha = blobFile(tmp_path / "blob", 5000)
    algo = ok(env, "upload", "algo", str(tmp_path / "blob"), "--name", "client-algo").strip()
    model = json.loads(
        ok(
            env,
            "upload",
            "model",
            str(tmp_path / "blob"),
            "--algo",
            algo,
            "--sha256",
            sha,
            "--json",
        )
    )
    assert (model["algo"], model["sha256"], model["size"]) == (algo, sha, 5000)
    listed = ok(env, "list", "model", "--algo", algo).splitlines()
    assert [line.split("\t")[0] for line in listed] == [model["uuid"]]
    assert listed[0].split("\t")[2:] == ["5000", algo]
    # The service's refusals, each with its exit code.
    fail(client(env, "delete", "algo", algo), 3, "model")
    fail(
        client(env, "upload", "algo", str(tmp_path / "blob"), "--name", "again", "--uuid", algo),
        3,
        "already",
    )
    fail(
        client(env, "upload", "model", str(tmp_path / "blob"), "--algo", str(uuids.uuid4())),
        2,
        "algo",
    )
    # The client's own, before any request.
    fail(client(env, "upload", "model", str(tmp_path / "blob")), 1, "a model needs --algo")
    fail(client(env, "upload", "data", str(tmp_path / "blob"), "--name", "x"), 1, "no --name")
    fail(client(env, "upload", "data", str(tmp_path / "missing")), 1, "cannot read")
    fail(client(env, "patch", "algo", algo, "--name", "x"), 1, "cannot be changed")
    fail(client(env, "frobnicate"), 1, "invalid choice")


def test_a_wrong_sha256_keeps_nothing(env, server, tmp_path):
    blobFile(tmp_path / "blob", 2000)
    uuid = str(uuids.uuid4())
    done = client(
        env, "upload", "data", str(tmp_path / "blob"), "--uuid", uuid, "--sha256", "0" * 64
    )
    fail(done, 1, "sha256")
    fail(client(env, "show", "data", uuid), 2, "no data")


def test_list_follows_next(env, server, tmp_path):
    blobFile(tmp_path / "blob", 10)
    prefix = f"paged-{uuids.uuid4().hex}"
    made = [
        ok(
            env,
            "upload",
            "problem",
            str(tmp_path / "blob"),
            "--name",
            f"{prefix}-{i}",
            "--description",
            "d",
        ).strip()
        for i in range(5)
    ]
    lines = ok(env, "list", "problem", "--name", prefix, "--page-size", "2").splitlines()
    assert [line.split("\t")[0] for line in lines] == made[::-1]
    assert [line.split("\t")[3] for line in lines] == [f"{prefix}-{i}" for i in range(4, -1, -1)]
    three = ok(
        env, "list", "problem", "--name", prefix, "--page-size", "2", "--limit", "3", "--json"
    )
    assert [json.loads(line)["uuid"] for line in three.splitlines()] == made[:1:-1]
    assert ok(env, "list", "problem", "--name", prefix + "-none") == ""
    fail(client(env, "list", "data", "--name", "x"), 1, "do not filter by name")


def test_download_resumes_after_the_connection_is_cut(server, tmp_path):
    size = 4 * 1024 * 1024
    sha = blobFile(tmp_path / "blob", size)
    uuid = ok(clientEnv(server), "upload", "data", str(tmp_path / "blob")).strip()
    with CuttingProxy(server.port, cutAfter=size // 3) as proxy:
        env = clientEnv(server, url=proxy.url)
        done = client(env, "download", "data", uuid, "-o", str(tmp_path / "copy"))
        assert (done.returncode, done.stderr) == (0, ""), done
        sent = proxy.sent().decode("latin-1").lower()
    assert hashlib.sha256((tmp_path / "copy").read_bytes()).hexdigest() == sha
    assert not (tmp_path / "copy.part").exists()
    # The second request asked for the rest only, of this blob only.
    [resumed] = [line for line in sent.split("\r\n") if line.startswith("range: bytes=")]
    offset = int(resumed.removeprefix("range: bytes=").rstrip("-"))
    assert 0 < offset < size // 3
    assert f'if-range: "{sha}"' in sent


def test_a_cut_download_resumes_at_the_next_run(server, tmp_path):
    size = 2 * 1024 * 1024
    sha = blobFile(tmp_path / "blob", size)
    uuid = ok(clientEnv(server), "upload", "data", str(tmp_path / "blob")).strip()
    target = tmp_path / "copy"
    with CuttingProxy(server.port, cutAfter=size // 2) as proxy:
        env = clientEnv(server, url=proxy.url)
        done = client(env, "--retries", "0", "download", "data", uuid, "-o", str(target))
    fail(done, 5, "cannot reach the service")
    partial = (tmp_path / "copy.part").stat().st_size
    assert 0 < partial < size and not target.exists()
    with CuttingProxy(server.port, cutAfter=0, cuts=0) as proxy:
        ok(clientEnv(server, url=proxy.url), "download", "data", uuid, "-o", str(target))
        assert f"range: bytes={partial}-" in proxy.sent().decode("latin-1").lower()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha


def test_a_sha256_mismatch_leaves_no_file(env, server, tmp_path):
    """A partial file whose bytes are not the blob's: the resumed whole is detected wrong."""
    size = 100_000
    blobFile(tmp_path / "blob", size)
    uuid = ok(env, "upload", "data", str(tmp_path / "blob")).strip()
    target = tmp_path / "copy"
    (tmp_path / "copy.part").write_bytes(os.urandom(size // 2))
    done = client(env, "download", "data", uuid, "-o", str(target))
    fail(done, 6, "sha256")
    assert not target.exists() and not (tmp_path / "copy.part").exists()
    # Run again: from the start, and right.
    ok(env, "download", "data", uuid, "-o", str(target))
    assert target.read_bytes() == (tmp_path / "blob").read_bytes()


def onTerminal(env: dict[str, str], *args: str) -> tuple[int, bytes, str]:
    """The command with its stderr on a pseudo-terminal: its code, the terminal's bytes, stdout."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [CLIENT, *args], env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not data:
            break
        seen += data
    os.close(master)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(30), seen, out


def test_progress_on_a_terminal_and_none_in_a_pipe(env, server, tmp_path):
    blobFile(tmp_path / "blob", 3 * 1024 * 1024)
    code, shown, out = onTerminal(env, "upload", "data", str(tmp_path / "blob"))
    assert code == 0, shown
    uuid = out.strip()
    assert b"blob: 100%" in shown and b"3.00M/3.00M" in shown and b"B/s" in shown, shown
    code, shown, out = onTerminal(env, "download", "data", uuid, "-o", str(tmp_path / "copy"))
    assert code == 0, shown
    assert b"copy: 100%" in shown and b"B/s" in shown, shown
    assert out == f"{tmp_path / 'copy'}\n"
    # --quiet on a terminal, and any command in a pipe: nothing but the answer.
    code, shown, _ = onTerminal(env, "--quiet", "download", "data", uuid, "-o", str(tmp_path / "q"))
    assert (code, shown) == (0, b"")
    done = subprocess.run(
        [CLIENT, "upload", "data", str(tmp_path / "blob")], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.count(b"\n") == 1 and b"\r" not in done.stdout
    done = subprocess.run(
        [CLIENT, "download", "data", uuid, "-o", str(tmp_path / "p")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, b"")


@pytest.fixture
def ownServer(tmp_path: Path) -> Iterator[Server]:
    """
    A server of the test's own, that does not throttle failed logins: the
    shared one's throttle (per address) is every test's.
    """
    server = startServer(str(tmp_path / "own-server"), "--login-throttle", "0")
    yield server
    server.stop()


def test_credentials_from_netrc_flags_or_nowhere(ownServer, tmp_path):
    server = ownServer
    blobFile(tmp_path / "blob", 10)
    bare = {k: v for k, v in os.environ.items() if not k.startswith("MORPHEO_STORAGE_")}
    bare.update(HOME=str(tmp_path), MORPHEO_STORAGE_URL=server.url)
    bare.pop("NETRC", None)
    fail(client(bare, "list", "data", "--limit", "1"), 4, "--user")
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {server.user} password {server.password}\n")
    netrc.chmod(0o600)
    uuid = ok(bare, "upload", "data", str(tmp_path / "blob")).strip()
    assert ok(bare, "show", "data", uuid, "--json").startswith("{")
    # The flags win over the netrc; a wrong password is exit 4.
    fail(
        client(bare, "show", "data", uuid, "--password", "wrong"), 4, "wrong user name or password"
    )
    netrc.write_text(f"machine 127.0.0.1 login {server.user} password wrong\n")
    fail(client(bare, "show", "data", uuid), 4, "password")
    assert ok(bare, "--user", server.user, "--password", server.password, "show", "data", uuid)
    # --url over the environment; nothing listening is exit 5, at once with --retries 0.
    port = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    fail(client(bare, "--url", url, "--retries", "0", "show", "data", uuid), 5, "cannot reach")


def test_resumable_upload_resumed_after_a_cut(server, tmp_path):
    """
    Through /uploads in chunks, the first connection cut mid-chunk: the
    client asks the service's offset (HEAD) and goes on from there.
    """
    size = 1024 * 1024
    sha = blobFile(tmp_path / "blob", size)
    uuid = str(uuids.uuid4())
    with CuttingProxy(server.port, cutAfter=400_000, requests=True) as proxy:
        env = clientEnv(server, url=proxy.url)
        answer = json.loads(ok(env, "upload", "data", str(tmp_path / "blob"), "--uuid", uuid,
                               "--resumable", "--chunk-size", "256K", "--json"))  # fmt: skip
        sent = proxy.sent().decode("latin-1").lower()
    assert (answer["uuid"], answer["size"], answer["sha256"]) == (uuid, size, sha)
    shown = json.loads(ok(clientEnv(server), "show", "data", uuid, "--json"))
    assert shown == answer
    assert "head /uploads/" in sent and sent.count("patch /uploads/") >= 5
    offsets = [int(line.split(": ")[1]) for line in sent.split("\r\n")
               if line.startswith("upload-offset: ")]  # fmt: skip
    # The cut chunk's rest sent from where the service had it, not from its start.
    chunk = 256 * 1024
    assert offsets[:2] == [0, chunk] and chunk < offsets[2] < 400_000, offsets
    assert offsets == sorted(set(offsets)) and offsets[-1] + chunk >= size, offsets
    copy = tmp_path / "copy"
    ok(clientEnv(server), "download", "data", uuid, "-o", str(copy))
    assert copy.read_bytes() == (tmp_path / "blob").read_bytes()


def test_large_files_go_through_uploads_unless_told(server, tmp_path):
    """64 MiB or more: resumable by default; --no-resumable sends one request."""
    path = tmp_path / "blob"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    for flags, through in (([], True), (["--no-resumable"], False)):
        before = len(server.log())
        ok(clientEnv(server), "upload", "data", str(path), *flags)
        logged = server.log()[before:]
        assert ('"PATCH /uploads/' in logged) is through, logged
        assert ('"POST /data"' in logged) is not through, logged


def test_download_redirected_to_the_store(seaweedfs: SeaweedFS, tmp_path):
    """
    A service with --redirect-downloads on S3: the bytes come from the
    store's presigned URL, which gets no credentials of the service's.
    """
    with RecordingProxy(seaweedfs.port) as store:
        server = startServer(str(tmp_path / "server"), "--blobstore", "s3",
                             "--s3-bucket", seaweedfs.bucket, "--s3-region", seaweedfs.region,
                             "--s3-endpoint", store.endpoint, "--redirect-downloads",
                             env=seaweedfs.serverEnv())  # fmt: skip
        try:
            env = clientEnv(server)
            sha = blobFile(tmp_path / "blob", 500_000)
            uuid = ok(env, "upload", "data", str(tmp_path / "blob")).strip()
            ok(env, "download", "data", uuid, "-o", str(tmp_path / "copy"))
        finally:
            server.stop()
        fromStore = store.sent().decode("latin-1").lower()
    assert hashlib.sha256((tmp_path / "copy").read_bytes()).hexdigest() == sha
    assert f"get /{seaweedfs.bucket}/data/{uuid}-" in fromStore
    assert "authorization: basic" not in fromStore
