"""
The deployment files, checked without Docker (which cannot run here):
C{docker-compose.yml}'s service nodes' commands are the plugin's options
and make a configuration, its bucket is the nodes' bucket, nginx's
configuration streams bodies (and C{nginx -t} takes it), and the image's
health check (C{python -m morpheo.health}) asks the service where its
options say it listens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from morpheo.health import HealthError, Target, target
from morpheo.tap import Options
from tests.integration.helpers import ROOT
from tests.integration.servers import freePort, startServer

COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
PASSWORD = "compose-secret"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def nodes() -> dict[str, dict[str, Any]]:
    """The services that run the image the Dockerfile builds."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image") == "morpheo-storage"
    }


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT, as the Dockerfile writes it."""
    [found] = re.findall(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), re.M)
    argv: list[str] = json.loads(found)
    return argv


def interpolated(value: str) -> str:
    """Compose's C{${NAME:?why}} and C{${NAME:-default}}, as an operator's shell gives them."""
    given = {"MORPHEO_STORAGE_PASSWORD": PASSWORD}

    def substitute(m: re.Match[str]) -> str:
        name, how, rest = m.group(1), m.group(2), m.group(3)
        if name in given:
            return given[name]
        assert how == ":-", f"{name} must be set: {rest}"
        return rest

    return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", substitute, value)


def nodeArguments(service: dict[str, Any]) -> list[str]:
    """What a node's twistd gets after C{morpheo-storage}: the entrypoint's, then the command."""
    argv = entrypoint()
    return argv[argv.index("morpheo-storage") + 1 :] + list(service["command"])


def test_thereAreTwoNodes() -> None:
    assert sorted(nodes()) == ["storage-1", "storage-2"]


@pytest.mark.parametrize("name", ["storage-1", "storage-2"])
def test_eachNodesCommandIsThePluginsOptions(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Parsed as twistd would, in the node's environment: a stateless node on
    the compose file's PostgreSQL and SeaweedFS bucket.
    """
    service = nodes()[name]
    environment = {k: interpolated(str(v)) for k, v in service["environment"].items()}
    for key in ("MORPHEO_STORAGE_PASSWORD", "MORPHEO_STORAGE_DB_PASS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    options = Options()
    options.parseOptions(nodeArguments(service))
    config = options.config()
    services = compose()["services"]
    assert config.dbHost == "postgres" and "postgres" in services
    assert config.dbPass == services["postgres"]["environment"]["POSTGRES_PASSWORD"].replace(
        "${MORPHEO_STORAGE_DB_PASS:-storage}", "storage"
    )
    assert config.dbUser == services["postgres"]["environment"]["POSTGRES_USER"]
    assert config.dbName == services["postgres"]["environment"]["POSTGRES_DB"]
    assert config.blobstore == "s3" and config.s3Endpoint == "http://seaweedfs:8333"
    assert config.stateless
    assert (config.user, config.password) == ("alice", PASSWORD)
    assert config.loginThrottle == 0  # every client comes through nginx
    # The bucket the one-shot service makes, before the nodes start.
    bucket = services["bucket"]
    assert f"s3.bucket.create -name {config.s3Bucket}" in " ".join(bucket["command"])
    assert service["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "bucket": {"condition": "service_completed_successfully"},
    }
    # The image's health check asks where this command listens.
    assert target(nodeArguments(service)) == Target("http", "127.0.0.1", config.port)


def test_nginxSendsToEveryNodeOnItsPort() -> None:
    conf = NGINX.read_text()
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    expected = [
        (name, str(target(nodeArguments(service)).port)) for name, service in nodes().items()
    ]
    assert sorted(upstreams) == sorted(expected)
    nginx = compose()["services"]["nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert {n: {"condition": "service_healthy"} for n in nodes()} == nginx["depends_on"]


@pytest.mark.parametrize(
    "directive",
    [
        "client_max_body_size 0;",
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
    ],
)
def test_nginxStreamsBodies(directive: str) -> None:
    """No buffering of uploads or downloads, no size limit of nginx's own."""
    lines = [line.split("#")[0].strip() for line in NGINX.read_text().splitlines()]
    assert directive in lines


def test_nginxTakesTheConfiguration(tmp_path: Path) -> None:
    """
    C{nginx -t} on it, the nodes' names (compose's, unknown here) given as
    the loopback.
    """
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(re.sub(r"storage-\d+:", "127.0.0.1:", NGINX.read_text()))
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_theImagesHealthCheckIsTheHealthCommand() -> None:
    text = DOCKERFILE.read_text()
    assert 'CMD ["python", "-m", "morpheo.health"]' in text
    assert "8000/health" not in text


# Where the health command asks


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], Target("http", "127.0.0.1", 8000)),
        (["--port", "9000"], Target("http", "127.0.0.1", 9000)),
        (["--host", "10.1.2.3", "--port=9001"], Target("http", "10.1.2.3", 9001)),
        (["--host", "::", "--port", "9002"], Target("http", "::1", 9002)),
        (["--cert", "c.pem", "--key", "k.pem", "--port", "8443"],
         Target("https", "127.0.0.1", 8443)),
        (["--listen", "tcp:9003:interface=127.0.0.2"], Target("http", "127.0.0.2", 9003)),
        (["--listen", "unix:/run/morpheo.sock", "--listen", "tcp:9004"],
         Target("unix", "/run/morpheo.sock")),
        (["--user", "alice", "--auth", "file:/nowhere", "--port", "9005"],
         Target("http", "127.0.0.1", 9005)),
    ],
)  # fmt: skip
def test_theHealthCommandFollowsTheOptions(args: list[str], expected: Target) -> None:
    assert target(args) == expected


def test_theHealthCommandCannotAskAnyFreePort() -> None:
    with pytest.raises(HealthError, match="--port 0"):
        target(["--port", "0"])


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "morpheo.health", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_theHealthCommandAsksARunningService(tmp_path: Path) -> None:
    """
    Given the service's process (as process 1 of a container), it reads its
    command line and asks there; another port answers nothing, and a
    process that is not the service is said to be so.
    """
    port = freePort()
    server = startServer(str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port))
    try:
        done = health("--pid", str(server.process.pid))
        assert done.returncode == 0, done.stderr
        done = health("--host", "127.0.0.1", "--port", str(port))
        assert done.returncode == 0, done.stderr
        server.stop()
        done = health("--host", "127.0.0.1", "--port", str(port))
        assert done.returncode == 1
        assert done.stderr.startswith(f"morpheo.health: http://127.0.0.1:{port}/health:"), (
            done.stderr
        )
        other = subprocess.Popen(["sleep", "60"])
        try:
            done = health("--pid", str(other.pid))
        finally:
            other.kill()
            other.wait()
        assert done.returncode == 1
        assert "is not twistd morpheo-storage" in done.stderr, done.stderr
    finally:
        server.stop()
