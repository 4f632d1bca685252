# -*- test-case-name: tests.unit.test_bench -*-
"""
The big blob (1 GiB by default) through the service, one transfer at a
time, beside the same bytes sent straight to a reference: nginx and the
upload limit for the local store, curl to presigned URLs for S3, curl to the
emulator's own API for Google Cloud Storage.

Uploads through the service are C{curl -F} multipart POSTs (it computes the
sha256, and fsyncs on the local store); downloads are C{curl -o /dev/null}.
Every local transfer starts with no dirty pages of the one before being
written back under it (C{sync}).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bench._common import Figure, cpuSeconds, credentials, curl, mbps, peakRSS, upload
from bench._context import Bench
from bench._refs import Nginx, fsyncedCopySeconds, presigned, sha256Seconds
from tests.integration.servers import FakeGCS, SeaweedFS, Server

Samples = dict[str, list[float]]


def _serviceRound(bench: Bench, server: Server, samples: Samples, sync: bool) -> None:
    """One upload and one download through the service, with their CPU time."""
    blob, size = bench.blob(), bench.size
    if sync:
        os.sync()
    cpu = cpuSeconds([server.process.pid])
    u, seconds = upload(server, blob, size)
    samples["cpu up"].append(cpuSeconds([server.process.pid]) - cpu)
    samples["up"].append(mbps(size, seconds))
    if sync:
        os.sync()
    cpu = cpuSeconds([server.process.pid])
    seconds = curl("-u", credentials(server), f"{server.url}/data/{u}/blob")
    samples["cpu down"].append(cpuSeconds([server.process.pid]) - cpu)
    samples["down"].append(mbps(size, seconds))
    curl("-u", credentials(server), "-X", "DELETE", f"{server.url}/data/{u}")


def _figures(
    bench: Bench,
    server: Server,
    samples: Samples,
    store: str,
    references: tuple[str, str],
    workers: int,
) -> list[Figure]:
    """The figures every store has: up and down against the reference, CPU, memory."""
    mib = f"{bench.settings.sizeMiB} MiB"
    return [
        Figure(
            f"{store} {mib} upload", "MB/s", workers, samples["up"],
            references[0], samples["ref up"], 0.9 if store != "local" else None,
        ),
        Figure(
            f"{store} {mib} download", "MB/s", workers, samples["down"],
            references[1], samples["ref down"], 0.9,
        ),
        Figure(f"{store} {mib} upload: service CPU", "s", workers, samples["cpu up"]),
        Figure(f"{store} {mib} download: service CPU", "s", workers, samples["cpu down"]),
        Figure(
            f"{store} {mib} transfers: service peak RSS", "MB", workers,
            [peakRSS(server.process.pid) / 1e6],
        ),
    ]  # fmt: skip


def local(bench: Bench, workers: int) -> list[Figure]:
    """The local store beside nginx, and the upload limit."""
    blob, size = bench.blob(), bench.size
    samples: Samples = {k: [] for k in ("up", "down", "cpu up", "cpu down", "ref up", "ref down")}
    limits: Samples = {"sha256 (openssl)": [], "fsync (dd)": [], "upload limit": []}
    with (
        bench.server(workers) as server,
        Nginx(bench.directory("nginx"), workers) as nginx,
    ):
        for run in range(bench.settings.runs):
            bench.say(f"local {bench.settings.sizeMiB} MiB, workers {workers}, run {run + 1}")
            _serviceRound(bench, server, samples, sync=True)
            os.sync()
            samples["ref up"].append(mbps(size, curl("-T", blob, f"{nginx.url}/blob.bin")))
            os.sync()
            samples["ref down"].append(mbps(size, curl(f"{nginx.url}/blob.bin")))
            os.unlink(os.path.join(nginx.www, "blob.bin"))
            limits["sha256 (openssl)"].append(mbps(size, sha256Seconds(blob)))
            os.sync()
            limits["fsync (dd)"].append(mbps(size, fsyncedCopySeconds(blob, server.dataDir)))
            limits["upload limit"].append(
                min(samples["ref up"][-1], limits["sha256 (openssl)"][-1], limits["fsync (dd)"][-1])
            )
        figures = _figures(bench, server, samples, "local", ("nginx PUT", "nginx GET"), workers)
    mib = f"{bench.settings.sizeMiB} MiB"
    limit = [
        Figure(f"local {mib} upload", "MB/s", workers, samples["up"], name, limits[name], goal)
        for name, goal in (("upload limit", 0.9), ("sha256 (openssl)", None), ("fsync (dd)", None))
    ]
    return figures[:1] + limit + figures[1:]


def _remote(
    bench: Bench,
    workers: int,
    store: SeaweedFS | FakeGCS,
    name: str,
    references: tuple[str, str],
    direct: Callable[[int], tuple[list[str], list[str], Callable[[], None]]],
) -> list[Figure]:
    """
    A remote store beside curl straight to it: C{direct(run)} gives curl's
    arguments for the upload and for the download, and what removes the
    object after.
    """
    size = bench.size
    samples: Samples = {k: [] for k in ("up", "down", "cpu up", "cpu down", "ref up", "ref down")}
    with bench.server(workers, store) as server:
        for run in range(bench.settings.runs):
            bench.say(f"{name} {bench.settings.sizeMiB} MiB, workers {workers}, run {run + 1}")
            _serviceRound(bench, server, samples, sync=False)
            up, down, remove = direct(run)
            samples["ref up"].append(mbps(size, curl(*up)))
            samples["ref down"].append(mbps(size, curl(*down)))
            remove()
        return _figures(bench, server, samples, name, references, workers)


def s3(bench: Bench, workers: int) -> list[Figure]:
    """The S3 store on SeaweedFS, beside curl to presigned URLs of the same gateway."""
    store = bench.seaweedfs()

    def direct(run: int) -> tuple[list[str], list[str], Callable[[], None]]:
        key = f"bench/direct-{workers}-{run}"
        put, get = presigned(store, key)

        def remove() -> None:
            store.signedRequest("DELETE", f"/{store.bucket}/{key}")

        return ["-T", bench.blob(), put], [get], remove

    references = ("curl PUT to SeaweedFS", "curl GET from SeaweedFS")
    return _remote(bench, workers, store, "S3", references, direct)


def gcs(bench: Bench, workers: int) -> list[Figure]:
    """The Google Cloud Storage store on fake-gcs-server, beside curl to its JSON API."""
    store = bench.gcs()
    objects = f"{store.endpoint}/storage/v1/b/{store.bucket}/o"

    def direct(run: int) -> tuple[list[str], list[str], Callable[[], None]]:
        key = f"bench-direct-{workers}-{run}"
        upload = f"{store.endpoint}/upload/storage/v1/b/{store.bucket}/o"

        def remove() -> None:
            curl("-X", "DELETE", f"{objects}/{key}")

        up = ["-X", "POST", "-T", bench.blob(), f"{upload}?uploadType=media&name={key}"]
        return up, [f"{objects}/{key}?alt=media"], remove

    references = ("curl POST to fake-gcs", "curl GET from fake-gcs")
    return _remote(bench, workers, store, "GCS", references, direct)
