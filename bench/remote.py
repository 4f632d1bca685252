"""
Benchmark: a 1 GiB blob through Morpheo Storage on the S3 blob store, a
SeaweedFS started for the run, beside curl straight to the same SeaweedFS S3
gateway as the reference.

    python bench/remote.py [--size-mib 1024] [--runs 3]

Uploads through the service are `curl -F` multipart POSTs (the service
computes the sha256 and streams the blob to S3 as a multipart upload); the
reference is `curl -T` of the same file to a presigned PUT URL.  Downloads
are `curl -o /dev/null` from both (a presigned GET for the reference).
Prints the median MB/s of each, the ratios to the reference, the
service's peak resident memory (VmHWM), and the CPU seconds that the
service, SeaweedFS and curl spent on each kind of transfer: on a small
machine they share the cores, so the service's hop slows the others down.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from botocore.config import Config  # noqa: E402
from botocore.session import get_session  # noqa: E402

from bench._common import curl, mbps, setUp  # noqa: E402
from tests.integration.servers import SeaweedFS, startServer  # noqa: E402


def cpuSeconds(pid: int | None = None) -> float:
    """User and system CPU time of process C{pid}, or of the waited-for
    children (the curls) when L{None}."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CPU:
    """CPU seconds spent by each process during the transfers of a kind."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.spent: dict[str, dict[str, list[float]]] = {}

    def curl(self, kind: str, *args: str) -> float:
        """Run curl as L{curl} does, counting the CPU time of each process."""
        before = {name: cpuSeconds(pid) for name, pid in self.pids.items()}
        seconds = curl(*args)
        spent = self.spent.setdefault(kind, {name: [] for name in self.pids})
        for name, pid in self.pids.items():
            spent[name].append(cpuSeconds(pid) - before[name])
        return seconds


def presigner(store: SeaweedFS) -> object:
    """A botocore S3 client for the store, to presign the reference's URLs."""
    return get_session().create_client(
        "s3",
        region_name=store.region,
        endpoint_url=store.endpoint,
        aws_access_key_id=store.accessKey,
        aws_secret_access_key=store.secretKey,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def main() -> None:
    args, size, work, blob = setUp(__doc__ or "", 3)
    try:
        # Room for every blob of the run: a full volume makes the next write
        # wait for a new one, in the middle of a measure.
        with SeaweedFS(volumeSizeMB=max(1024, 4 * args.size_mib * args.runs)) as store:
            server = startServer(
                os.path.join(work, "server"), *store.serverArgs(), env=store.serverEnv()
            )
            s3 = presigner(store)
            auth = f"{server.user}:{server.password}"
            kinds = ("up", "down", "s3 up", "s3 down")
            results: dict[str, list[float]] = {k: [] for k in kinds}
            assert store.process is not None
            cpu = CPU({"service": server.process.pid, "seaweedfs": store.process.pid, "curl": None})
            try:
                for run in range(args.runs):
                    u = str(uuid.uuid4())
                    form = ["-F", f"uuid={u}", "-F", f"size={size}", "-F", f"blob=@{blob}"]
                    t = cpu.curl("up", "-u", auth, *form, f"{server.url}/data")
                    results["up"].append(mbps(size, t))
                    t = cpu.curl("down", "-u", auth, f"{server.url}/data/{u}/blob")
                    results["down"].append(mbps(size, t))
                    curl("-u", auth, "-X", "DELETE", f"{server.url}/data/{u}")

                    params = {"Bucket": store.bucket, "Key": f"bench/direct-{run}"}
                    put = s3.generate_presigned_url("put_object", Params=params)  # type: ignore[attr-defined]
                    get = s3.generate_presigned_url("get_object", Params=params)  # type: ignore[attr-defined]
                    t = cpu.curl("s3 up", "-T", blob, put)
                    results["s3 up"].append(mbps(size, t))
                    t = cpu.curl("s3 down", get)
                    results["s3 down"].append(mbps(size, t))
                    store.signedRequest("DELETE", f"/{store.bucket}/bench/direct-{run}")
                rss = server.peakRSS()
            finally:
                server.stop()
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"blob: {args.size_mib} MiB, {args.runs} runs, medians; {os.cpu_count()} cores")
        print(
            f"upload   (curl -F, sha256, S3 multipart): {med['up']:8.0f} MB/s"
            f"   curl -T to S3: {med['s3 up']:8.0f} MB/s   ratio {med['up'] / med['s3 up']:.2f}"
        )
        print(
            f"download (curl):                         {med['down']:8.0f} MB/s"
            f"   curl from S3:  {med['s3 down']:8.0f} MB/s"
            f"   ratio {med['down'] / med['s3 down']:.2f}"
        )
        print(f"server peak RSS (VmHWM): {rss / 1e6:.1f} MB")
        for k, v in results.items():
            print(f"  {k:8s} runs: " + ", ".join(f"{x:.0f}" for x in v) + " MB/s")
        print("CPU seconds per transfer (medians):")
        for k, spent in cpu.spent.items():
            print(
                f"  {k:8s} "
                + ", ".join(f"{name} {statistics.median(v):5.2f}" for name, v in spent.items())
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
