# -*- test-case-name: tests.unit.test_bench -*-
"""
The references the service is measured against, run beside it on the same
machine: nginx (a WebDAV PUT and a sendfile GET of the same bytes), presigned
URLs straight to an S3 gateway, and the upload limit's other two parts,
C{openssl dgst -sha256} and C{dd conv=fsync} of the same file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

from botocore.config import Config
from botocore.session import get_session

from tests.integration.servers import SeaweedFS, freePort, waitUntil

NGINX_CONF = """
daemon off;
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    client_max_body_size 0;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location / {{ dav_methods PUT DELETE; create_full_put_path on; }}
    }}
}}
"""


class Nginx:
    """An nginx of its own on a free port, with as many workers as the service."""

    def __init__(self, root: str, workers: int) -> None:
        self.root = root
        self.workers = workers
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.www = os.path.join(root, "www")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        # nginx's workers drop root: they must reach its directories and write in them.
        os.chmod(self.root, 0o755)
        for d in ("tmp", "www"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
            os.chmod(os.path.join(self.root, d), 0o777)
        conf = os.path.join(self.root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(root=self.root, port=self.port, workers=self.workers))
        self._process = subprocess.Popen(
            ["nginx", "-c", conf], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = self._process

        def answers() -> None:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited with {process.returncode}")
            with open(os.path.join(self.www, "ping"), "w") as f:
                f.write("pong")
            got = subprocess.run(["curl", "-sSf", "-o", "/dev/null", f"{self.url}/ping"])
            if got.returncode != 0:
                raise RuntimeError(f"curl exited with {got.returncode}")

        try:
            waitUntil(answers, 20, "nginx answering")
        except BaseException:
            self.__exit__()
            raise
        return self

    def pids(self) -> list[int]:
        """Its master (whose tree holds its workers)."""
        return [self._process.pid] if self._process is not None else []

    def __exit__(self, *args: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
            self._process = None


def presigner(store: SeaweedFS) -> Any:
    """A botocore S3 client for the store, to presign the reference's URLs."""
    return get_session().create_client(
        "s3",
        region_name=store.region,
        endpoint_url=store.endpoint,
        aws_access_key_id=store.accessKey,
        aws_secret_access_key=store.secretKey,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def presigned(store: SeaweedFS, key: str, lifetime: int = 3600) -> tuple[str, str]:
    """A presigned PUT URL and a presigned GET URL of C{key} in the store's bucket."""
    s3 = presigner(store)
    params = {"Bucket": store.bucket, "Key": key}
    return (
        s3.generate_presigned_url("put_object", Params=params, ExpiresIn=lifetime),
        s3.generate_presigned_url("get_object", Params=params, ExpiresIn=lifetime),
    )


def timed(argv: list[str]) -> float:
    """Run C{argv} to its end (its output thrown away); the seconds it took."""
    began = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.monotonic() - began


def sha256Seconds(path: str) -> float:
    """How long C{openssl dgst -sha256} takes over the file."""
    return timed(["openssl", "dgst", "-sha256", path])


def fsyncedCopySeconds(path: str, directory: str) -> float:
    """How long C{dd conv=fsync} takes to copy the file into C{directory} (then removed)."""
    copy = os.path.join(directory, "dd-copy.bin")
    try:
        return timed(["dd", f"if={path}", f"of={copy}", "bs=1M", "conv=fsync", "status=none"])
    finally:
        os.unlink(copy)


#: What each tool the sections may run is, and its Debian package.
TOOLS = {
    "curl": "curl",
    "nginx": "nginx",
    "wrk": "wrk",
    "openssl": "openssl",
    "dd": "coreutils",
}


def missing(tools: set[str]) -> list[str]:
    """The Debian packages of those of C{tools} that are not on the PATH."""
    return sorted({TOOLS[tool] for tool in tools if shutil.which(tool) is None})
