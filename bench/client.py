"""
Benchmark: C{morpheo-storage-client} beside curl, on one server on the
local blob store: a file of C{--size-mib} MiB (1024 by default) uploaded
and downloaded by each, in turn, C{--runs} times (3), every download's
sha256 checked.

    python bench/client.py [--size-mib 1024] [--runs 3] [--upload-args="--no-resumable"]

C{--upload-args} go to the client's upload (C{--chunk-size 64M}, C{--no-resumable}: files
of 64 MiB or more go through the resumable /uploads by default).

Prints, for each run, the MB/s of each transfer and the client's peak
resident memory (VmHWM) and CPU seconds (curl's too), then the medians: the
client's memory stays flat whatever the size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.integration.servers import Server, startServer  # noqa: E402

CLIENT = os.path.join(os.path.dirname(sys.executable), "morpheo-storage-client")


def peakOf(pid: int, until: threading.Event, peak: list[int]) -> None:
    """
    The process's VmHWM (its own peak, since its exec: the rusage of a
    child forked from this process counts this one's memory too), read
    until it ends.
    """
    while not until.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        until.wait(0.02)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, float, bytes]:
    """Run C{argv}: its seconds, its peak RSS in bytes, its CPU seconds, its stdout."""
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peakOf, args=(process.pid, done, peak), daemon=True)
    sampler.start()
    assert process.stdout is not None and process.stderr is not None
    out = process.stdout.read()  # a line: stderr cannot fill its pipe meanwhile
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited with {process.returncode}: {err.decode()}")
    return elapsed, peak[0], usage.ru_utime + usage.ru_stime, out


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def oneRun(
    server: Server, work: str, blob: str, size: int, sha: str, uploadArgs: list[str]
) -> dict[str, float]:
    env = {
        **os.environ,
        "MORPHEO_STORAGE_URL": server.url,
        "MORPHEO_STORAGE_USER": server.user,
        "MORPHEO_STORAGE_PASSWORD": server.password,
    }
    mb = size / 1e6
    auth = f"{server.user}:{server.password}"
    result: dict[str, float] = {}
    seconds, rss, cpu, out = timed([CLIENT, "upload", "data", blob, *uploadArgs], env)
    uuid = out.decode().strip()
    result["client up MB/s"], result["client up RSS MB"] = mb / seconds, rss / 1e6
    result["client up CPU s"] = cpu
    copy = os.path.join(work, "copy")
    seconds, rss, cpu, _ = timed([CLIENT, "download", "data", uuid, "-o", copy], env)
    result["client down MB/s"], result["client down RSS MB"] = mb / seconds, rss / 1e6
    result["client down CPU s"] = cpu
    assert sha256(copy) == sha
    os.unlink(copy)
    form = ["-F", f"size={size}", "-F", f"blob=@{blob}"]
    seconds, _, cpu, _ = timed(["curl", "-sS", "-o", "/dev/null", "-u", auth, *form,
                           f"{server.url}/data"], env)  # fmt: skip
    result["curl up MB/s"], result["curl up CPU s"] = mb / seconds, cpu
    seconds, _, cpu, _ = timed(["curl", "-sS", "-u", auth, "-o", copy,
                           f"{server.url}/data/{uuid}/blob"], env)  # fmt: skip
    result["curl down MB/s"], result["curl down CPU s"] = mb / seconds, cpu
    assert sha256(copy) == sha
    os.unlink(copy)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--upload-args", default="", help="more arguments of the upload")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    work = tempfile.mkdtemp(prefix="bench-client-")
    server = startServer(os.path.join(work, "server"))
    try:
        blob = os.path.join(work, "blob.bin")
        with open(blob, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        sha = sha256(blob)
        runs = []
        for i in range(args.runs):
            run = oneRun(server, work, blob, size, sha, shlex.split(args.upload_args))
            runs.append(run)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in run.items()), flush=True)
        print("median: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in runs):.1f}" for k in runs[0]
        ))  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
