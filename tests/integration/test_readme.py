"""
The README's commands, run as written: the server started with its run
command (on localhost:8000, its default data directory moved into a
temporary one), then every shell example of "Using it", in order, with curl.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.integration.helpers import ROOT, curl
from tests.integration.servers import Server, freePort, startServer, waitUntil

README = str(ROOT / "README.md")

#: What each shell example runs after: strict, and without what a stock
#: Debian lacks, whether this machine has it or not (uuidgen comes with
#: uuid-runtime, which is not installed by default).
PRELUDE = (
    'set -euo pipefail\nuuidgen() { echo "uuidgen: not on a stock Debian" >&2; return 127; }\n'
)


def shellBlocks(section: str) -> list[str]:
    text = open(README, encoding="utf-8").read()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start:end], re.S)


def startAsWritten(args: list[str], tmp_path, cwd, log) -> Server:
    """
    A C{twistd -n morpheo-storage ...} command of the README, started (its
    default data directory moved under C{tmp_path}) and waited for until it
    logs each of its listeners.
    """
    assert args[:3] == ["twistd", "-n", "morpheo-storage"]
    server = startServer(
        str(tmp_path / "xdg" / "morpheo-storage"),
        *args[3:],
        env={"XDG_DATA_HOME": str(tmp_path / "xdg")},
        asWritten=True,
        cwd=str(cwd),
        logPath=str(log),
    )
    return server


@pytest.fixture
def readmeServer(tmp_path):
    [command] = [
        line for line in shellBlocks("Install and run")[0].splitlines() if line.startswith("twistd")
    ]
    server = startAsWritten(shlex.split(command), tmp_path, tmp_path, tmp_path / "twistd.log")
    yield server
    server.stop()


def test_readme_examples_work_as_written(readmeServer, tmp_path):
    blocks = shellBlocks("Using it")
    assert len(blocks) >= 5
    work = tmp_path / "work"
    work.mkdir()
    script = PRELUDE + "\n".join(blocks)
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outputs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    original = (work / "problem.tar.gz").read_bytes()
    sha = hashlib.sha256(original).hexdigest()
    # upload, get, list, the algo, the model (with a length, then chunked), the patch
    uploaded = outputs[0]
    assert uploaded["name"] == "funky_problem" and uploaded["sha256"] == sha
    assert outputs[1] == uploaded
    assert outputs[2]["items"][0] == uploaded
    assert (work / "problem-copy.tar.gz").read_bytes() == original
    algo, model, chunked, patched = outputs[3:7]
    assert algo["name"] == "my_algo"
    assert model["algo"] == algo["uuid"] and model["sha256"] == sha
    assert (chunked["algo"], chunked["sha256"], chunked["size"]) == (
        algo["uuid"],
        sha,
        len(original),
    )
    assert patched["description"] == "greater" and patched["uuid"] != uploaded["uuid"]
    # Ranges, HEAD, If-None-Match
    assert (work / "first-100-bytes.bin").read_bytes() == original[:100]
    assert (work / "last-100-bytes.bin").read_bytes() == original[-100:]
    assert f'ETag: "{sha}"' in done.stdout
    assert "\n304\n" in done.stdout
    # Checked uploads, lists, delete
    checkedAlgo, checkedModel, models, named, deleted = outputs[7:12]
    assert checkedAlgo["sha256"] == sha and checkedModel["sha256"] == sha
    assert models["items"] == [checkedModel] and models["next"].startswith("/model?")
    assert [i["uuid"] for i in named["items"]] == [patched["uuid"]]
    assert deleted == patched
    assert len(outputs) == 12
    assert "error" not in done.stdout
    assert readmeServer.sql("SELECT kind, count(*) FROM resource GROUP BY 1 ORDER BY 1") == [
        ("algo", 2),
        ("model", 3),
    ]


def test_readme_https_examples_work_as_written(tmp_path):
    """
    "Serving HTTPS", as written: the certificate made with openssl, each
    server started with its command (in turn), then the curl commands that
    follow it, over TLS, plain TCP and a UNIX socket.
    """
    work = tmp_path / "work"
    work.mkdir()
    servers: list[Server] = []
    answers: list[dict] = []

    def run(lines: list[str]) -> None:
        if not lines:
            return
        done = subprocess.run(
            ["bash", "-c", PRELUDE + "\n".join(lines)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        answers.extend(json.loads(line) for line in done.stdout.splitlines() if line.strip())

    def start(args: list[str]) -> None:
        for server in servers:
            server.stop()
        log = tmp_path / f"twistd-{len(servers)}.log"
        servers.append(startAsWritten(args, tmp_path, work, log))

    try:
        for block in shellBlocks("Serving HTTPS"):
            lines: list[str] = []
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith("twistd "):
                    run(lines)
                    lines = []
                    start(shlex.split(line))
                elif line.strip():
                    lines.append(line)
            run(lines)
    finally:
        for server in servers:
            server.stop()
    # A list over TLS from the first server, then over TCP, TLS and UNIX
    # from the second.
    assert len(servers) == 2
    assert len(answers) == 4
    assert all(a["items"] == [] and a["length"] == 0 for a in answers), answers


def test_readme_metrics_example_works_as_written(tmp_path):
    """
    "Metrics", as written: the server started with its command, a list
    through its listener, then the scrape of its metrics endpoint, which
    prints the line the README says.
    """
    text = open(README, encoding="utf-8").read()
    start = text.index("\n## Metrics\n")
    [printed] = re.findall(r"which prints `([^`]+)`", text[start : text.find("\n## ", start + 1)])
    work = tmp_path / "work"
    work.mkdir()
    [serverBlock, curlBlock] = shellBlocks("Metrics")
    [command] = [line for line in serverBlock.replace("\\\n", " ").splitlines() if line.strip()]
    server = startAsWritten(shlex.split(command), tmp_path, work, tmp_path / "twistd.log")
    try:
        done = subprocess.run(
            ["bash", "-c", PRELUDE + curlBlock],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [printed]


def test_readme_embedding_example_runs(tmp_path):
    """
    The "Embedding" example, as a script (its data directory and port moved
    into the test's): the host's own route, then an upload and a download
    under /storage/ with curl, then a clean stop on SIGTERM.
    """
    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## Embedding\n") : text.index("\n## Layout\n")]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    port = freePort()
    script = tmp_path / "host.py"
    script.write_text(
        code.replace("/var/lib/my-app/storage", str(tmp_path / "storage")).replace(
            "tcp:8080", f"tcp:{port}:interface=127.0.0.1"
        )
    )
    log = tmp_path / "host.log"
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=open(log, "wb"), stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def answering() -> bool:
            assert process.poll() is None, log.read_text()
            return curl("-f", "-u", "alice:secret", f"{base}/storage/problem").returncode == 0

        waitUntil(answering, 60, "the host answering")
        hello = curl(f"{base}/hello")
        assert hello.stdout == "hello from the host\n"
        blob = tmp_path / "model.bin"
        blob.write_bytes(os.urandom(300_000))
        up = subprocess.run(
            ["curl", "-sS", "-u", "alice:secret", "-F", "name=embedded",
             "-F", "size=300000", "-F", f"blob=@{blob}", f"{base}/storage/algo"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        algo = json.loads(up.stdout)
        assert algo["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
        down = subprocess.run(
            ["curl", "-sS", "-u", "alice:secret", f"{base}/storage/algo/{algo['uuid']}/blob"],
            capture_output=True,
            timeout=60,
        )
        assert down.stdout == blob.read_bytes()
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert "Traceback" not in log.read_text()


def test_readme_options_table_has_every_option() -> None:
    """Every option the command line takes is in the README's table of options."""
    from morpheo.tap import Options

    text = open(README, encoding="utf-8").read()
    start = text.index("\n## Options\n")
    table = text[start : text.find("\n## ", start + 1)]
    options = Options()
    declared = [*options.optParameters, *options.optFlags]
    names = [str(option[0]) for option in declared if isinstance(option, list)]
    assert len(names) == len(declared)
    names += [n[4:].replace("_", "-") for n in dir(options) if n.startswith("opt_")]
    missing = [
        name
        for name in set(names) - {"help", "version"}
        if not name.startswith("help-") and f"`--{name}`" not in table
    ]
    assert not missing, missing


def pythonBlocks(section: str) -> list[str]:
    text = open(README, encoding="utf-8").read()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_readme_resumable_upload_examples_work_as_written(tmp_path):
    """
    "Resumable uploads": its curl commands, then its tuspy script, against
    a server started as "Install and run" says (on a free port: the only
    change to what the README says).
    """
    server = startServer(
        str(tmp_path / "data"), "--user", "alice", "--password", "secret", credentials=False
    )
    work = tmp_path / "work"
    work.mkdir()

    def here(text: str) -> str:
        return text.replace("http://localhost:8000", server.url)

    try:
        [block] = shellBlocks("Resumable uploads")
        done = subprocess.run(
            ["bash", "-c", PRELUDE + here(block)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        original = (work / "dataset.bin").read_bytes()
        [document] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert document["size"] == len(original) == 3_000_000
        assert document["sha256"] == hashlib.sha256(original).hexdigest()
        [script] = pythonBlocks("Resumable uploads")
        ran = subprocess.run(
            [sys.executable, "-c", here(script)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        path = ran.stdout.strip()
        assert re.fullmatch(r"/data/[0-9a-f-]{36}", path), ran.stdout
        got = curl("-u", "alice:secret", f"{server.url}{path}")
        assert json.loads(got.stdout)["sha256"] == document["sha256"]
        assert server.sql("SELECT count(*) FROM upload") == [(0,)]
    finally:
        server.stop()


def test_readme_client_examples_work_as_written(readmeServer, tmp_path):
    """
    "Client", as written: the shell examples in order, then the Python one,
    with the installed command and no credentials but the examples' own.
    """
    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## Client\n") : text.index("\n## Serving HTTPS\n")]
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORPHEO_STORAGE_")}
    env.update(HOME=str(tmp_path), PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}")
    env.pop("NETRC", None)
    script = PRELUDE + "\n".join(shellBlocks("Client"))
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    original = (work / "problem.tar.gz").read_bytes()
    sha = hashlib.sha256(original).hexdigest()
    lines = done.stdout.splitlines()
    uuid = lines[0].removeprefix("uuid: ")
    assert f"name: funky_problem\ndescription: great\nsize: 666\nsha256: {sha}\n" in done.stdout
    [listed] = [line for line in lines if line.startswith(uuid + "\t")]
    assert listed.endswith("\t666\tfunky_problem")
    assert (
        "problem-copy.tar.gz" in lines and (work / "problem-copy.tar.gz").read_bytes() == original
    )
    model, listedModel = (json.loads(line) for line in lines if line.startswith("{"))
    assert model == listedModel and model["sha256"] == sha
    assert lines.count(uuid) == 2  # patched, deleted
    assert readmeServer.sql("SELECT kind, count(*) FROM resource GROUP BY 1 ORDER BY 1") == [
        ("algo", 1),
        ("model", 1),
    ]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    printed = done.stdout.splitlines()
    assert printed[0].endswith(" funky 666") and printed[-1].startswith("there is no problem ")


def test_readme_client_section_has_every_option() -> None:
    """Every option of the client's commands is in its section."""
    from morpheo.client._cli import makeParser

    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## Client\n") : text.index("\n## Serving HTTPS\n")]
    parser = makeParser()
    [commands] = [a for a in parser._actions if isinstance(a.choices, dict)]
    assert isinstance(commands.choices, dict)
    parsers = [parser, *commands.choices.values()]
    names = {o for p in parsers for a in p._actions for o in a.option_strings}
    quoted = " ".join(re.findall(r"`[^`\n]*`", section))
    missing = [
        n
        for n in names - {"-h", "--help", "--version", "--no-resumable"}
        if not re.search(rf"[` ]{re.escape(n)}[` =]", quoted)
    ]
    assert not missing, missing
