#!/usr/bin/env python3
"""Reload stall: the longest a request waits while a large configuration is reloaded.

meshgate runs with one worker (`--concurrency 1`) pinned to core 0, a configuration of
--services ServiceEntries with a VirtualService each (a few MB of YAML), and a plaintext
Gateway port routing `bench.local` to a `meshgate echo` backend on core 1. oha sends a steady
--rate of keep-alive requests for --duration seconds while the proxy is sent SIGHUP --reloads
times, evenly spread; the report is oha's slowest request and p99, and the same with no reload,
for each binary given.

Usage: python3 benches/load/reload_stall.py [--binary NEW] [--baseline OLD] [--services 3000]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORT = 18480
ADMIN = 15980
ECHO = 18481


def config(services):
    docs = [
        f"""apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  listen: {{address: 127.0.0.1, portOverrides: {{80: {PORT}}}}}
  admin: {{address: "127.0.0.1:{ADMIN}"}}
  reload: {{pollInterval: 0s}}
""",
        """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
""",
        f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench, namespace: default}}
spec:
  hosts: [bench.local]
  gateways: [istio-system/gw]
  http: [{{route: [{{destination: {{host: echo.internal, port: {{number: 80}}}}}}]}}]
""",
        f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {ECHO}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
""",
    ]
    for i in range(services):
        docs.append(
            f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}, namespace: default}}
spec:
  hosts: [svc-{i}.example.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.{i // 250}.{i % 250 + 1}, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: default}}
spec:
  hosts: [svc-{i}.example.internal]
  gateways: [istio-system/gw]
  http:
  - match: [{{uri: {{prefix: /v{i}/}}, headers: {{x-team: {{exact: team-{i % 7}}}}}}}]
    route: [{{destination: {{host: svc-{i}.example.internal, port: {{number: 80}}}}}}]
"""
        )
    return "---\n".join(docs)


def wait_port(port):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def reloads_counted():
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/stats/prometheus") as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith('meshgate_config_reloads_total{result="success"}'):
            return int(line.split()[-1])
    return 0


def run(binary, work, args, reloads):
    proc = subprocess.Popen(
        ["taskset", "-c", "0", binary, "run", "-c", f"{work}/config.yaml", "--concurrency", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(PORT)
        oha = subprocess.Popen(
            ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
             "-z", f"{args.duration}s", "-c", "8", "-q", str(args.rate),
             "-H", "host: bench.local", f"http://127.0.0.1:{PORT}/"],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)
        gap = (args.duration - 2.0) / max(reloads, 1)
        for _ in range(reloads):
            proc.send_signal(signal.SIGHUP)
            time.sleep(gap)
        out, _ = oha.communicate()
        done = reloads_counted()
        report = json.loads(out)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    summary = report["summary"]
    pct = report["latencyPercentiles"]
    return {
        "reloads": done,
        "requests": summary.get("total") and int(report["statusCodeDistribution"].get("200", 0)),
        "slowest_ms": summary["slowest"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "p50_ms": pct["p50"] * 1000,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/meshgate"))
    ap.add_argument("--baseline")
    ap.add_argument("--services", type=int, default=3000)
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--duration", type=int, default=22)
    ap.add_argument("--rate", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshgate-reload-") as work:
        with open(f"{work}/config.yaml", "w") as f:
            f.write(config(args.services))
        size = os.path.getsize(f"{work}/config.yaml")
        echo = subprocess.Popen(
            ["taskset", "-c", "1", args.binary, "echo", "--listen", f"127.0.0.1:{ECHO}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(ECHO)
            results = {}
            binaries = [("meshgate", args.binary)]
            if args.baseline:
                binaries.append(("baseline", args.baseline))
            for name, binary in binaries:
                results[name] = {
                    "no_reload": run(binary, work, args, 0),
                    "reloads": run(binary, work, args, args.reloads),
                }
        finally:
            echo.terminate()
            echo.wait()
    print(f"configuration: {args.services} ServiceEntries + VirtualServices, {size // 1024} KiB")
    print(f"{'binary':10} {'case':10} {'reloads':>8} {'p50 ms':>8} {'p99 ms':>8} {'slowest ms':>11}")
    for name, cases in results.items():
        for case, r in cases.items():
            print(f"{name:10} {case:10} {r['reloads']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['slowest_ms']:>11.1f}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
