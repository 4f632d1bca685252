"""
Benchmark: a 1 GiB blob through Morpheo Storage on the local blob store,
beside nginx on the same machine as the reference.

    python bench/local.py [--size-mib 1024] [--runs 3]

Uploads are `curl -F` multipart POSTs (the service computes the sha256 and
fsyncs); nginx takes the same bytes as a WebDAV PUT into its own directory.
Downloads are `curl -o /dev/null` from both.  Prints the median MB/s of each,
the ratio to nginx, and the service's peak resident memory (VmHWM).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import curl, mbps, setUp  # noqa: E402
from tests.integration.servers import freePort, startServer  # noqa: E402

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    client_max_body_size 0;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""


def main() -> None:
    if shutil.which("nginx") is None:
        # Before the server starts: it would be left running otherwise.
        sys.exit("bench/local.py needs nginx on the PATH, as its reference")
    args, size, work, blob = setUp(__doc__ or "", 5)
    try:
        server = startServer(os.path.join(work, "server"))
        root = os.path.join(work, "nginx")
        for d in ("tmp", "www"):
            os.makedirs(os.path.join(root, d))
            os.chmod(os.path.join(root, d), 0o777)  # nginx's workers drop root
        port = freePort()
        with open(os.path.join(root, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(root=root, port=port))
        nginx = subprocess.Popen(["nginx", "-c", os.path.join(root, "nginx.conf")])
        time.sleep(0.5)
        auth = f"{server.user}:{server.password}"
        results: dict[str, list[float]] = {k: [] for k in ("up", "down", "nginx up", "nginx down")}
        try:
            for run in range(args.runs):
                import uuid

                u = str(uuid.uuid4())
                # Every transfer starts with no dirty pages of the one before
                # being written back under it.
                os.sync()
                t = curl(
                    "-u",
                    auth,
                    "-F",
                    f"uuid={u}",
                    "-F",
                    f"size={size}",
                    "-F",
                    f"blob=@{blob}",
                    f"{server.url}/data",
                )
                results["up"].append(mbps(size, t))
                os.sync()
                t = curl("-u", auth, f"{server.url}/data/{u}/blob")
                results["down"].append(mbps(size, t))
                os.sync()
                t = curl("-T", blob, f"http://127.0.0.1:{port}/blob{run}.bin")
                results["nginx up"].append(mbps(size, t))
                os.sync()
                t = curl(f"http://127.0.0.1:{port}/blob{run}.bin")
                results["nginx down"].append(mbps(size, t))
                os.unlink(os.path.join(root, "www", f"blob{run}.bin"))
            rss = server.peakRSS()
        finally:
            nginx.terminate()
            nginx.wait()
            server.stop()
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"blob: {args.size_mib} MiB, {args.runs} runs, medians; {os.cpu_count()} cores")
        print(
            f"upload   (curl -F, sha256, fsync): {med['up']:8.0f} MB/s"
            f"   nginx PUT: {med['nginx up']:8.0f} MB/s   ratio {med['up'] / med['nginx up']:.2f}"
        )
        print(
            f"download (curl):                  {med['down']:8.0f} MB/s"
            f"   nginx GET: {med['nginx down']:8.0f} MB/s"
            f"   ratio {med['down'] / med['nginx down']:.2f}"
        )
        print(f"server peak RSS (VmHWM): {rss / 1e6:.1f} MB")
        for k, v in results.items():
            print(f"  {k:10s} runs: " + ", ".join(f"{x:.0f}" for x in v))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
