#!/usr/bin/env python3
"""TLS passthrough beside nginx's stream module: the same SNI routing, without termination.

meshgate runs a `PASSTHROUGH` Gateway server with a VirtualService `tls` route for the SNI;
nginx runs `stream { ssl_preread on; proxy_pass $by_sni; }` with a map of the same SNI. Each
is one worker pinned to core 0. Behind both, on core 1, an nginx HTTPS server (the TLS end)
serves a large file from tmpfs and a small answer; the clients (curl for the large transfer,
oha for short connections) run on core 1 too. Measured, alternating round by round:

- a large transfer: MB/s of one download through the proxy, and the proxy's CPU per GB;
- short connections: a new TLS connection per request through the proxy (oha
  --disable-keepalive, 16 at a time), connections/s and the proxy's CPU per connection.

The proxy never sees plaintext, so what it costs is accept, the ClientHello read and parse,
the upstream connect, the replay and the splice.

    python3 benches/load/passthrough.py [--rounds 3] [--size-mb 512] [--duration 10]

Needs nginx with the stream module (Debian: nginx, libnginx-mod-stream), oha, curl, taskset.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HOST = bench.HOST
TLS_BACKEND_PORT = 18444
MESHGATE_PORT = 18445
NGINX_PORT = 18446
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def tls_backend(work, size_mb):
    os.makedirs(f"{work}/www", exist_ok=True)
    with open(f"{work}/www/big", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size_mb):
            f.write(chunk)
    prefix = bench.nginx(work, "tls-backend", f"""
user root;
worker_processes 1;
daemon off;
pid {work}/tls-backend/nginx.pid;
error_log {work}/tls-backend/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  server {{
    listen 127.0.0.1:{TLS_BACKEND_PORT} ssl backlog=4096;
    ssl_certificate {work}/gateway/cert-chain.pem;
    ssl_certificate_key {work}/gateway/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    location = /big {{ root {work}/www; }}
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
    proc = subprocess.Popen(
        ["taskset", "-c", "1", "nginx", "-p", prefix, "-c", "nginx.conf"], stderr=subprocess.DEVNULL
    )
    bench.wait_port(TLS_BACKEND_PORT)
    return proc


def meshgate_config(work):
    d = f"{work}/meshgate"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/config.yaml", "w") as f:
        f.write(f"""
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: bench, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  listen: {{address: 127.0.0.1, portOverrides: {{443: {MESHGATE_PORT}}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: ["*.example-target.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: by-sni, namespace: istio-system}}
spec:
  hosts: ["*.example-target.com"]
  gateways: [gw]
  tls:
  - match: [{{sniHosts: [{HOST}]}}]
    route: [{{destination: {{host: backend.internal, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: istio-system}}
spec:
  hosts: [backend.internal]
  ports: [{{number: 443, name: tls, protocol: TLS, targetPort: {TLS_BACKEND_PORT}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
""")
    return f"{d}/config.yaml"


def nginx_stream_config(work):
    return bench.nginx(work, "nginx-stream", f"""
user root;
worker_processes 1;
daemon off;
load_module {STREAM_MODULE};
pid {work}/nginx-stream/nginx.pid;
error_log {work}/nginx-stream/logs/error.log warn;
events {{ worker_connections 8192; }}
stream {{
  map $ssl_preread_server_name $by_sni {{
    {HOST} 127.0.0.1:{TLS_BACKEND_PORT};
  }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} backlog=4096;
    ssl_preread on;
    proxy_pass $by_sni;
  }}
}}
""")


def start(name, binary, work):
    if name == "meshgate":
        cmd = ["taskset", "-c", "0", binary, "run", "--concurrency", "1", "-c", meshgate_config(work)]
        port = MESHGATE_PORT
        env = dict(os.environ, MESHGATE_LOG="warn")
    else:
        cmd = ["taskset", "-c", "0", "nginx", "-p", nginx_stream_config(work), "-c", "nginx.conf"]
        port = NGINX_PORT
        env = None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    bench.wait_port(port)
    return proc, port


def download(work, port, size_mb):
    cmd = [
        "taskset", "-c", "1", "curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
        "--cacert", f"{work}/root/root-cert.pem",
        "--resolve", f"{HOST}:{port}:127.0.0.1",
        f"https://{HOST}:{port}/big",
    ]
    size, seconds = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    if int(size) != size_mb << 20:
        sys.exit(f"short download: {size} bytes")
    return float(seconds)


def short_connections(work, port, duration):
    cmd = [
        "taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
        "-z", f"{duration}s", "-c", "16", "--disable-keepalive",
        "--cacert", f"{work}/root/root-cert.pem",
        "--connect-to", f"{HOST}:{port}:127.0.0.1:{port}",
        f"https://{HOST}:{port}/",
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def one_round(name, binary, work, args):
    proc, port = start(name, binary, work)
    try:
        pids = bench.family(proc.pid)
        download(work, port, args.size_mb)  # warm-up
        before = bench.cpu_seconds(pids)
        seconds = download(work, port, args.size_mb)
        cpu = bench.cpu_seconds(pids) - before
        gb = args.size_mb / 1024
        out = {"mb_per_s": args.size_mb / seconds, "cpu_s_per_gb": cpu / gb}
        short_connections(work, port, 2)  # warm-up
        before = bench.cpu_seconds(pids)
        res = short_connections(work, port, args.duration)
        cpu = bench.cpu_seconds(pids) - before
        ok = res["statusCodeDistribution"].get("200", 0)
        out["conns_per_s"] = ok / args.duration
        out["cpu_us_per_conn"] = cpu / max(ok, 1) * 1e6
        out["failed"] = bench.failures(res)
        return out
    finally:
        bench.stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/meshgate"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    for tool in ("oha", "nginx", "curl", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    if not os.path.exists(STREAM_MODULE):
        sys.exit(f"{STREAM_MODULE} not found: apt-get install libnginx-mod-stream")
    work = tempfile.mkdtemp(prefix="meshgate-passthrough-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        bench.pki(args.binary, work)
        backend = tls_backend(work, args.size_mb)
        try:
            results = {"meshgate": [], "nginx": []}
            for r in range(args.rounds):
                for name in results:
                    print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
                    results[name].append(one_round(name, args.binary, work, args))
        finally:
            bench.stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in results.items()}
    print(f"\n{args.rounds} rounds, median; one download of {args.size_mb} MB, short connections for {args.duration} s\n")
    print("| metric | meshgate | nginx stream | meshgate/nginx |")
    print("|---|---|---|---|")
    for key, label in (
        ("mb_per_s", "large transfer (MB/s)"),
        ("cpu_s_per_gb", "proxy CPU per GB (s)"),
        ("conns_per_s", "short connections/s"),
        ("cpu_us_per_conn", "proxy CPU per connection (µs)"),
    ):
        m, n = med["meshgate"][key], med["nginx"][key]
        print(f"| {label} | {m:,.2f} | {n:,.2f} | {m / n:.2f} |")
    print(f"\nfailed requests: meshgate {med['meshgate']['failed']:.0f}, nginx {med['nginx']['failed']:.0f}")
    print("\nraw rounds (JSON):")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
