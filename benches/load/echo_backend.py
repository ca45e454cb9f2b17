#!/usr/bin/env python3
"""`meshgate echo` as a load-test backend, beside nginx answering a fixed body from memory.

Like with like:
  * one worker each (`meshgate echo --concurrency 1`, nginx `worker_processes 1`), pinned to
    core 0; the load generator (oha) on core 1;
  * plaintext HTTP/1.1 keep-alive connections on loopback, no access log on either side;
  * the same body: nginx `return 200` with SIZE bytes, meshgate fortio's `GET /?size=SIZE`
    (SIZE bytes of payload, application/octet-stream); the responses differ only in headers.

Besides the like-with-like pair, meshgate alone: its JSON echo (`GET /anything`, a JSON
description of the request built per request) and fortio's echo of a request body
(`POST /echo` with SIZE bytes, sent back). After each meshgate run, its own histogram at
`/stats/prometheus` is read and its request count compared with oha's.

Reported per scenario: requests/s, p50 and p99 latency (oha), and requests per CPU-second of
the server (its user + system time from /proc, over the measured run only). Runs alternate
meshgate, nginx, meshgate, nginx, ... and the median and the spread (min-max) of the rounds are
printed, then every round as JSON.

Needs: oha (`cargo install oha --locked`), nginx (Debian package), taskset, and a release
build of meshgate (built here if missing).

Usage: python3 benches/load/echo_backend.py [--duration 10] [--rounds 3] [--connections 64]
                                            [--size 64] [--binary PATH]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

# The process accounting and lifecycle helpers of the main load bench.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_seconds, failures, family, stop, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESHGATE_PORT = 18190
NGINX_PORT = 18191

# (name, server, method, path): the path is formatted with the body size.
SCENARIOS = (
    ("fixed body", "meshgate", "GET", "/?size={size}"),
    ("fixed body", "nginx", "GET", "/"),
    ("JSON echo", "meshgate", "GET", "/anything"),
    ("body echoed", "meshgate", "POST", "/echo"),
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    ap.add_argument("--size", type=int, default=64, help="response body bytes")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/meshgate"))
    args = ap.parse_args()

    for tool in ("oha", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="meshgate-echo-bench-")
    try:
        body = "x" * args.size
        results = {}
        for r in range(args.rounds):
            for server in ("meshgate", "nginx"):
                print(f"round {r + 1}/{args.rounds}: {server}", file=sys.stderr)
                proc, port = start(server, args, work, body)
                try:
                    pids = family(proc.pid)
                    for name, s, method, path in SCENARIOS:
                        if s != server:
                            continue
                        path = path.format(size=args.size)
                        run = measure(pids, port, method, path, body, args)
                        if server == "meshgate":
                            run["stats_count"] = stats_count(port)
                        results.setdefault((name, server), []).append(run)
                finally:
                    stop(proc)
        report(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def start(server, args, work, body):
    if server == "meshgate":
        cmd = [
            "taskset", "-c", "0", args.binary, "echo", "--concurrency", "1",
            "--listen", f"127.0.0.1:{MESHGATE_PORT}",
        ]
        port = MESHGATE_PORT
        env = dict(os.environ, MESHGATE_LOG="warn")
    else:
        prefix = f"{work}/nginx"
        os.makedirs(f"{prefix}/logs", exist_ok=True)
        with open(f"{prefix}/nginx.conf", "w") as f:
            f.write(f"""
user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{NGINX_PORT} backlog=4096;
    location / {{ return 200 "{body}"; }}
  }}
}}
""")
        cmd = ["taskset", "-c", "0", "nginx", "-p", prefix, "-c", "nginx.conf"]
        port = NGINX_PORT
        env = None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port)
    return proc, port


def measure(pids, port, method, path, body, args):
    oha(port, method, path, body, 2, args.connections)  # warm-up
    before = stats_count(port) if port == MESHGATE_PORT else 0
    cpu0 = cpu_seconds(pids)
    res = oha(port, method, path, body, args.duration, args.connections)
    cpu = cpu_seconds(pids) - cpu0
    ok = res["statusCodeDistribution"].get("200", 0)
    return {
        "rps": res["summary"]["requestsPerSec"],
        "p50_ms": res["latencyPercentiles"]["p50"] * 1000,
        "p99_ms": res["latencyPercentiles"]["p99"] * 1000,
        "per_cpu_second": ok / cpu if cpu > 0 else 0.0,
        "cpu_s": cpu,
        "ok": ok,
        "errors": failures(res),
        "stats_before": before,
    }


def oha(port, method, path, body, duration, conns):
    cmd = [
        "taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
        "-z", f"{duration}s", "-c", str(conns), "-m", method,
    ]
    if method == "POST":
        cmd += ["-d", body, "-T", "application/octet-stream"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def stats_count(port):
    """Every request meshgate's own histogram counted, all classes."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("meshgate_echo_request_duration_seconds_count")
    )


def report(results, args):
    rows = [
        ("requests/s", "rps", "{:.0f}"),
        ("p50 latency (ms)", "p50_ms", "{:.3f}"),
        ("p99 latency (ms)", "p99_ms", "{:.3f}"),
        ("requests per CPU-second", "per_cpu_second", "{:.0f}"),
    ]
    print(
        f"\n{args.rounds} rounds of {args.duration}s, {args.connections} keep-alive connections, "
        f"{args.size}-byte bodies; median (min-max)\n"
    )
    print("| scenario | server | " + " | ".join(label for label, _, _ in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for (name, server), runs in results.items():
        cells = []
        for _, key, fmt in rows:
            vals = [r[key] for r in runs]
            med = statistics.median(vals)
            cells.append(f"{fmt.format(med)} ({fmt.format(min(vals))}-{fmt.format(max(vals))})")
        print(f"| {name} | {server} | " + " | ".join(cells) + " |")
    if "fixed body" in {n for n, _ in results}:
        m = statistics.median(r["per_cpu_second"] for r in results[("fixed body", "meshgate")])
        n = statistics.median(r["per_cpu_second"] for r in results[("fixed body", "nginx")])
        print(f"\nfixed body, requests per CPU-second, meshgate/nginx: {m / n:.2f}")
    errors = sum(r["errors"] for runs in results.values() for r in runs)
    print(f"failed requests: {errors}")
    # meshgate's own histogram against oha: the histogram counts every request it answered,
    # so over a run it holds at least oha's 200s (plus those oha cut at the deadline).
    for (name, server), runs in results.items():
        if server == "meshgate":
            for r in runs:
                counted = r["stats_count"] - r["stats_before"]
                if counted < r["ok"]:
                    print(f"{name}: meshgate's histogram counted {counted:.0f}, oha saw {r['ok']} OK")
    print("\nraw rounds (JSON):")
    print(json.dumps({f"{n} / {s}": runs for (n, s), runs in results.items()}, indent=1))


if __name__ == "__main__":
    main()
