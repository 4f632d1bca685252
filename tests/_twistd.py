"""
A twistd server started with any command line (TLS, several --listen, a
JSON log...), waited for until it has logged each of its listeners; the
addresses come from those log lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from tests._server import PASSWORD, TWISTD, USER, Server

LISTENING = re.compile(r"listening on (\S+?) \(blob store")


def startTwistd(
    dataDir: str,
    *args: str,
    listeners: int = 1,
    env: dict[str, str] | None = None,
    credentials: bool = True,
) -> tuple[Server, list[str]]:
    """
    C{twistd -n morpheo-storage ARGS} (with C{--user/--password} unless
    C{credentials} is false); returns the server and its listening
    addresses (C{http://...}, C{https://...}, C{unix:...}).
    """
    os.makedirs(dataDir, exist_ok=True)
    logPath = os.path.join(dataDir, "twistd.log")
    auth = ["--user", USER, "--password", PASSWORD] if credentials else []
    command = [TWISTD, "-n", "--pidfile=", "morpheo-storage", *auth, "--data-dir", dataDir, *args]
    log = open(logPath, "wb")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=dataDir,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with open(logPath, encoding="utf-8", errors="replace") as f:
            text = f.read()
        found = LISTENING.findall(text)
        if len(found) >= listeners:
            port = next((int(m.group(1)) for a in found if (m := re.search(r":(\d+)/$", a))), 0)
            return Server(process, dataDir, port, logPath), found
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{text}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not start in time:\n{open(logPath).read()}")
