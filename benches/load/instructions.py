#!/usr/bin/env python3
"""Instructions per keep-alive request, counted by callgrind: an A/B of two meshgate builds that
does not depend on how busy the machine is.

Wall-clock CPU per request (bench.py) moves by 10-30% between runs on a shared machine, which
hides a change of a few percent. Callgrind counts the instructions meshgate executes, the same
for the same binary and input whatever else runs. Each build serves two runs of N and 4N
requests over the same 8 keep-alive mTLS connections; the difference divided by 3N is the
instructions per request, with start-up and handshakes cancelled out.

    python3 benches/load/instructions.py --baseline OLD_BINARY [--binary NEW] [--requests 1000]
        [--retries-off meshgate|baseline|both] [--http2] [--haproxy]

`--haproxy` counts HAProxy (bench.py's configuration, OpenSSL in the same process) under the
same load too: user-space instructions only, as for meshgate; the kernel's work is not counted.

Needs valgrind, oha, nginx (the backend) and taskset, as bench.py.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def drive(port, tls, requests, http2):
    """`requests` keep-alive requests from oha on core 1 over 8 mTLS connections."""
    subprocess.run(
        [
            "taskset", "-c", "1", "oha", "--no-tui", "-n", str(requests), "-c", "8",
            *(["--http2", "-p", "8"] if http2 else []),
            "--cacert", f"{tls.keys}/client/root-cert.pem",
            "--cert", f"{tls.keys}/client/cert-chain.pem",
            "--key", f"{tls.keys}/client/key.pem",
            "--connect-to", f"{bench.HOST}:{port}:127.0.0.1:{port}",
            f"https://{bench.HOST}:{port}/",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def count(binary, work, requests, retries_off=False, http2=False):
    """Total instructions of one meshgate process serving `requests` keep-alive requests."""
    out = f"{work}/callgrind.out"
    tls = bench.Tls(f"{work}/ecdsa", False)
    config = bench.meshgate_config(work, tls)
    if retries_off:
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text.replace("http: [{route:", "http: [{retries: {attempts: 0}, route:"))
    cmd = [
        "taskset", "-c", "0", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        binary, "run", "--concurrency", "1", "-c", config,
    ]
    env = dict(os.environ, MESHGATE_LOG="warn")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        bench.wait_port(bench.MESHGATE_PORT, timeout=120)
        drive(bench.MESHGATE_PORT, tls, requests, http2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return totals(out)


def count_haproxy(work, requests, http2=False):
    """Total instructions of one HAProxy process (one thread) serving `requests` requests."""
    tls = bench.Tls(f"{work}/ecdsa", False)
    config = bench.haproxy_config(work, tls)
    out = f"{work}/haproxy-callgrind"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cmd = [
        "taskset", "-c", "0", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/out.%p",
        "haproxy", "-db", "-f", config,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bench.wait_port(bench.HAPROXY_PORT, timeout=120)
        drive(bench.HAPROXY_PORT, tls, requests, http2)
    finally:
        # A soft stop: HAProxy ends once its connections are closed, and callgrind writes out.
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    # One file for each process callgrind followed.
    return sum(totals(f"{out}/{name}") for name in os.listdir(out))


def totals(path):
    """The instruction total of one callgrind output file."""
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    sys.exit(f"no totals in {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/meshgate"))
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument(
        "--retries-off",
        choices=("meshgate", "baseline", "both"),
        help="route with `retries: {attempts: 0}` (Istio's policy off) in this build",
    )
    ap.add_argument("--http2", action="store_true", help="HTTP/2 downstream: 8 connections of 8 streams")
    ap.add_argument("--haproxy", action="store_true", help="count HAProxy under the same load too")
    args = ap.parse_args()
    for tool in ("valgrind", "oha", "nginx", "taskset", *(("haproxy",) if args.haproxy else ())):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    work = tempfile.mkdtemp(prefix="meshgate-instructions-")
    try:
        bench.pki(args.binary, work, ["ecdsa"])
        backend = bench.start_backend(work)
        try:
            n = args.requests
            rows = []
            for name, binary in (("meshgate", args.binary), ("baseline", args.baseline)):
                off = args.retries_off in (name, "both")
                small = count(binary, work, n, off, args.http2)
                large = count(binary, work, 4 * n, off, args.http2)
                rows.append((name, (large - small) / (3 * n)))
                print(f"{name}: {small} and {large} instructions", file=sys.stderr)
            if args.haproxy:
                small = count_haproxy(work, n, args.http2)
                large = count_haproxy(work, 4 * n, args.http2)
                rows.append(("haproxy", (large - small) / (3 * n)))
                print(f"haproxy: {small} and {large} instructions", file=sys.stderr)
            print("| build | instructions per keep-alive request |")
            print("|---|---|")
            for name, per in rows:
                print(f"| {name} | {per:,.0f} |")
            print(f"\nmeshgate/baseline: {rows[0][1] / rows[1][1]:.3f}")
        finally:
            bench.stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
