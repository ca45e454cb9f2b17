#!/usr/bin/env python3
"""Load time and peak memory of `meshgate check` for 100, 1,000 and 10,000 resources.

Each configuration is a MeshGateway with an outbound listener and N/2 ServiceEntries (two ports,
DNS, MESH_EXTERNAL) with a DestinationRule each, spread over 50 namespaces: what a large
mesh's egress configuration holds. `check` reads, parses and compiles it as `run` and every
reload do. Wall time and the process's peak RSS (from wait4) are reported, the best of
`--rounds` runs.

    python3 benches/load/config_scale.py [--binary target/release/meshgate] [--rounds 3]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(pairs):
    parts = [
        "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\n"
        "metadata: {name: gw, namespace: istio-system}\n"
        "spec:\n  labels: {istio: egressgateway}\n  outbound: {address: 127.0.0.1:15001}\n"
    ]
    for i in range(pairs):
        ns = f"ns{i % 50}"
        parts.append(
            f"---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            f"metadata: {{name: se{i}, namespace: {ns}}}\nspec:\n  hosts: [api{i}.example.com]\n"
            f"  ports: [{{number: 443, name: https, protocol: HTTPS}}, "
            f"{{number: 80, name: http, protocol: HTTP}}]\n"
            f"  resolution: DNS\n  location: MESH_EXTERNAL\n"
            f"---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata: {{name: dr{i}, namespace: {ns}}}\nspec:\n  host: api{i}.example.com\n"
            f"  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 100}}}}}}\n"
        )
    return "".join(parts)


def run(binary, path):
    """Seconds and peak RSS (KiB) of one `check`."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [binary, "check", "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"check failed on {path}: {proc.stderr.read().decode()[-2000:]}")
    return took, usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/meshgate"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="meshgate-config-scale-")
    try:
        print("| resources | file size | load time | peak RSS |")
        print("|---|---|---|---|")
        for resources in (100, 1_000, 10_000):
            path = os.path.join(work, f"{resources}.yaml")
            with open(path, "w") as f:
                f.write(config(resources // 2))
            runs = [run(args.binary, path) for _ in range(args.rounds)]
            took = min(r[0] for r in runs)
            rss = min(r[1] for r in runs)
            size = os.path.getsize(path)
            print(f"| {resources:,} | {size / 1024:,.0f} KiB | {took * 1000:,.0f} ms | {rss / 1024:,.1f} MiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
