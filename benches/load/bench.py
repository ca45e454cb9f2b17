#!/usr/bin/env python3
"""Side-by-side load bench: meshgate and nginx terminating the same mTLS, proxying to the
same backend, driven by the same load generator (oha) with a client certificate.

Like with like:
  * one worker each (`meshgate run --concurrency 1`, nginx `worker_processes 1`), pinned to
    core 0; the load generator and the backend share core 1;
  * TLS 1.3 only, key exchange X25519 only, session resumption off on both (every
    --disable-keepalive connection is a full handshake with client-certificate verification);
  * HTTP/1.1 from the client, keep-alive upstream connections to the backend;
  * the backend is a third process (nginx answering `200 ok` from memory) on core 1.

Runs alternate meshgate, nginx, meshgate, nginx, ... and the median of the rounds is
reported. Needs: oha (`cargo install oha --locked`), nginx (Debian package), taskset, and a
release build of meshgate (built here if missing).

Usage: python3 benches/load/bench.py [--duration 10] [--rounds 3] [--connections 64]
       python3 benches/load/bench.py --baseline OLD_BINARY   # two meshgate builds, alternating
"""

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "httpbin.example-target.com"
MESHGATE_PORT = 18443
NGINX_PORT = 19443
BACKEND_PORT = 18080
ADMIN_PORT = 15900
OUTBOUND_PORT = 15901
SOURCE_ADMIN_PORT = 15910
NGINX_OUTBOUND_PORT = 19001
GATEWAY_ID = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway"
CLIENT_ID = "spiffe://example.com/ns/default/sa/sleep"
TICKS = os.sysconf("SC_CLK_TCK")


PARTS = ("keepalive", "handshake", "two-hop", "idle")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    ap.add_argument("--handshake-connections", type=int, default=16)
    ap.add_argument("--idle-connections", type=int, default=500)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/meshgate"))
    ap.add_argument("--baseline", help="another meshgate binary to compare with, instead of nginx")
    ap.add_argument(
        "--only",
        default=",".join(PARTS),
        help="comma-separated parts to run: " + ", ".join(PARTS)
        + " (idle alone opens its connections on a fresh process, after a short keep-alive warm-up)",
    )
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    if not args.only <= set(PARTS):
        sys.exit(f"--only takes {', '.join(PARTS)}")
    other = "baseline" if args.baseline else "nginx"

    for tool in ("oha", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="meshgate-bench-")
    try:
        pki(args.binary, work)
        backend = start_backend(work)
        try:
            results = {"meshgate": [], other: []}
            for r in range(args.rounds):
                for name in ("meshgate", other):
                    print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
                    one_hop = run_proxy(name, args, work)
                    if "two-hop" in args.only:
                        one_hop["two_hop"] = run_two_hop(name, args, work)
                    results[name].append(one_hop)
            report(results, args)
        finally:
            stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pki(binary, work):
    def mg(*a):
        subprocess.run([binary, *a], check=True, stdout=subprocess.DEVNULL)

    mg("pki", "root", "--out", f"{work}/root")
    mg("pki", "intermediate", "--root", f"{work}/root", "--trust-domain", "example-target.com", "--out", f"{work}/target")
    mg("pki", "intermediate", "--root", f"{work}/root", "--trust-domain", "example.com", "--out", f"{work}/source")
    mg("pki", "workload", "--ca", f"{work}/target", "--spiffe-id", GATEWAY_ID, "--dns", f"*.example-target.com", "--out", f"{work}/gateway")
    mg("pki", "workload", "--ca", f"{work}/source", "--spiffe-id", CLIENT_ID, "--out", f"{work}/client")


def nginx(work, name, conf):
    prefix = f"{work}/{name}"
    os.makedirs(f"{prefix}/logs", exist_ok=True)
    with open(f"{prefix}/nginx.conf", "w") as f:
        f.write(conf)
    return prefix


def start_backend(work):
    prefix = nginx(work, "backend", f"""
user root;
worker_processes 1;
daemon off;
pid {work}/backend/nginx.pid;
error_log {work}/backend/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{BACKEND_PORT} reuseport backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", prefix, "-c", "nginx.conf"], stderr=subprocess.DEVNULL)
    wait_port(BACKEND_PORT)
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
  identity: {{certChain: {work}/gateway/cert-chain.pem, privateKey: {work}/gateway/key.pem, rootCerts: {work}/gateway/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{443: {MESHGATE_PORT}}}}}
  admin: {{address: "127.0.0.1:{ADMIN_PORT}"}}
  tls: {{sessionResumption: false}}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: istio, namespace: istio-system}}
spec:
  meshConfig:
    trustDomain: example-target.com
    tlsDefaults: {{ecdhCurves: [X25519]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*.example-target.com"]
    tls: {{mode: ISTIO_MUTUAL, minProtocolVersion: TLSV1_3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [{HOST}]
  gateways: [istio-system/gw]
  http: [{{route: [{{destination: {{host: backend.internal, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {BACKEND_PORT}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
""")
    return f"{d}/config.yaml"


def nginx_proxy_config(work):
    return nginx(work, "nginx-proxy", f"""
user root;
worker_processes 1;
daemon off;
pid {work}/nginx-proxy/nginx.pid;
error_log {work}/nginx-proxy/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} ssl backlog=4096;
    ssl_certificate {work}/gateway/cert-chain.pem;
    ssl_certificate_key {work}/gateway/key.pem;
    ssl_client_certificate {work}/gateway/root-cert.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_session_tickets off;
    ssl_session_cache off;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-forwarded-client-cert $ssl_client_s_dn;
    }}
  }}
}}
""")


def binary(name, args):
    """The meshgate binary that runs as `name`, or None for nginx."""
    return {"meshgate": args.binary, "baseline": args.baseline}.get(name)


def start_proxy(name, args, work):
    if binary(name, args):
        cmd = ["taskset", "-c", "0", binary(name, args), "run", "--concurrency", "1", "-c", meshgate_config(work)]
        port = MESHGATE_PORT
        env = dict(os.environ, MESHGATE_LOG="warn")
    else:
        cmd = ["taskset", "-c", "0", "nginx", "-p", nginx_proxy_config(work), "-c", "nginx.conf"]
        port = NGINX_PORT
        env = None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port)
    return proc, port


def run_proxy(name, args, work):
    proc, port = start_proxy(name, args, work)
    try:
        pids = family(proc.pid)
        oha(work, port, 2, args.connections, keepalive=True)  # warm-up
        out = {}
        for kind, conns, keepalive in (("keepalive", args.connections, True), ("handshake", args.handshake_connections, False)):
            if kind not in args.only:
                continue
            cpu0 = cpu_seconds(pids)
            res = oha(work, port, args.duration, conns, keepalive)
            cpu = cpu_seconds(pids) - cpu0
            ok = res["statusCodeDistribution"].get("200", 0)
            errors = failures(res)
            out[kind] = {
                "rps": res["summary"]["requestsPerSec"],
                "p50_ms": res["latencyPercentiles"]["p50"] * 1000,
                "p99_ms": res["latencyPercentiles"]["p99"] * 1000,
                "cpu_us_per_req": cpu / max(ok, 1) * 1e6,
                "ok": ok,
                "errors": errors,
            }
        if "idle" in args.only:
            out["idle_kib_per_conn"] = idle_memory(pids, port, work, args.idle_connections)
        return out
    finally:
        stop(proc)


def source_config(work):
    d = f"{work}/source"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/config.yaml", "w") as f:
        f.write(f"""
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: source, namespace: default}}
spec:
  identity: {{certChain: {work}/client/cert-chain.pem, privateKey: {work}/client/key.pem, rootCerts: {work}/client/root-cert.pem}}
  outbound: {{address: "127.0.0.1:{OUTBOUND_PORT}"}}
  admin: {{address: "127.0.0.1:{SOURCE_ADMIN_PORT}"}}
  resolve: [{{host: {HOST}, port: 443, address: "127.0.0.1:{MESHGATE_PORT}"}}]
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: istio, namespace: istio-system}}
spec:
  meshConfig:
    trustDomain: example.com
    tlsDefaults: {{ecdhCurves: [X25519]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-example-target, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin-example-target, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
""")
    return f"{d}/config.yaml"


def nginx_outbound_config(work):
    return nginx(work, "nginx-outbound", f"""
user root;
worker_processes 1;
daemon off;
pid {work}/nginx-outbound/nginx.pid;
error_log {work}/nginx-outbound/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream gateway {{ server 127.0.0.1:{NGINX_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{NGINX_OUTBOUND_PORT} backlog=4096;
    location / {{
      proxy_pass https://gateway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_ssl_certificate {work}/client/cert-chain.pem;
      proxy_ssl_certificate_key {work}/client/key.pem;
      proxy_ssl_trusted_certificate {work}/root/root-cert.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name {HOST};
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
    }}
  }}
}}
""")


def run_two_hop(name, args, work):
    """client -> source proxy (plaintext) -> ISTIO_MUTUAL -> gateway -> backend; both proxies
    on core 0, the upstream mTLS connections pooled."""
    gateway, _ = start_proxy(name, args, work)
    if binary(name, args):
        cmd = ["taskset", "-c", "0", binary(name, args), "run", "--concurrency", "1", "-c", source_config(work)]
        port = OUTBOUND_PORT
        env = dict(os.environ, MESHGATE_LOG="warn")
    else:
        cmd = ["taskset", "-c", "0", "nginx", "-p", nginx_outbound_config(work), "-c", "nginx.conf"]
        port = NGINX_OUTBOUND_PORT
        env = None
    source = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port)
    try:
        pids = family(gateway.pid) + family(source.pid)
        plain_oha(port, 2, args.connections)  # warm-up, and the pooled upstream connections
        cpu0 = cpu_seconds(pids)
        res = plain_oha(port, args.duration, args.connections)
        cpu = cpu_seconds(pids) - cpu0
        ok = res["statusCodeDistribution"].get("200", 0)
        return {
            "rps": res["summary"]["requestsPerSec"],
            "p50_ms": res["latencyPercentiles"]["p50"] * 1000,
            "p99_ms": res["latencyPercentiles"]["p99"] * 1000,
            "cpu_us_per_req": cpu / max(ok, 1) * 1e6,
            "ok": ok,
            "errors": failures(res),
        }
    finally:
        stop(source)
        stop(gateway)


def failures(res):
    """Transport errors and every response that is not a 200. oha cuts the requests in flight
    when -z runs out ("aborted due to deadline", one per connection): not a failure."""
    transport = sum(v for k, v in res.get("errorDistribution", {}).items() if k != "aborted due to deadline")
    not_ok = sum(v for code, v in res["statusCodeDistribution"].items() if code != "200")
    return transport + not_ok


def plain_oha(port, duration, conns):
    cmd = [
        "taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
        "-z", f"{duration}s", "-c", str(conns),
        "--connect-to", f"{HOST}:80:127.0.0.1:{port}",
        f"http://{HOST}/",
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def oha(work, port, duration, conns, keepalive):
    cmd = [
        "taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
        "-z", f"{duration}s", "-c", str(conns),
        "--cacert", f"{work}/root/root-cert.pem",
        "--cert", f"{work}/client/cert-chain.pem",
        "--key", f"{work}/client/key.pem",
        "--connect-to", f"{HOST}:{port}:127.0.0.1:{port}",
    ]
    if not keepalive:
        cmd.append("--disable-keepalive")
    cmd.append(f"https://{HOST}:{port}/")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def idle_memory(pids, port, work, n):
    """RSS growth per idle mTLS connection: n handshakes completed, nothing sent after."""
    ctx = ssl.create_default_context(cafile=f"{work}/root/root-cert.pem")
    ctx.load_cert_chain(f"{work}/client/cert-chain.pem", f"{work}/client/key.pem")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    time.sleep(0.5)
    before = rss_kib(pids)
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        t = ctx.wrap_socket(s, server_hostname=HOST)
        conns.append(t)
    # TLS 1.3: the server verifies the client certificate after the client's Finished; a
    # short wait lets every connection reach the idle state.
    time.sleep(1.0)
    after = rss_kib(pids)
    for t in conns:
        t.close()
    return (after - before) / n


def family(pid):
    """The process and its children (nginx master + worker; taskset execs in place)."""
    time.sleep(0.3)
    pids = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def report(results, args):
    def med(name, kind, key):
        vals = [r[kind][key] for r in results[name]]
        return statistics.median(vals)

    def med_idle(name):
        return statistics.median(r["idle_kib_per_conn"] for r in results[name])

    rows = [
        ("keep-alive requests/s", "keepalive", "rps", "{:.0f}", "higher"),
        ("keep-alive p50 latency (ms)", "keepalive", "p50_ms", "{:.2f}", "lower"),
        ("keep-alive p99 latency (ms)", "keepalive", "p99_ms", "{:.2f}", "lower"),
        ("keep-alive CPU per request (µs)", "keepalive", "cpu_us_per_req", "{:.1f}", "lower"),
        ("full handshakes/s (new connection per request)", "handshake", "rps", "{:.0f}", "higher"),
        ("handshake p50 latency (ms)", "handshake", "p50_ms", "{:.2f}", "lower"),
        ("handshake p99 latency (ms)", "handshake", "p99_ms", "{:.2f}", "lower"),
        ("CPU per handshake + request (µs)", "handshake", "cpu_us_per_req", "{:.1f}", "lower"),
        ("two hops, keep-alive requests/s", "two_hop", "rps", "{:.0f}", "higher"),
        ("two hops, p50 latency (ms)", "two_hop", "p50_ms", "{:.2f}", "lower"),
        ("two hops, p99 latency (ms)", "two_hop", "p99_ms", "{:.2f}", "lower"),
        ("two hops, CPU per request, both proxies (µs)", "two_hop", "cpu_us_per_req", "{:.1f}", "lower"),
    ]
    print(f"\n{args.rounds} rounds of {args.duration}s, median; keep-alive with {args.connections} connections, handshakes with {args.handshake_connections}\n")
    other = [name for name in results if name != "meshgate"][0]
    print(f"| metric | meshgate | {other} | meshgate/{other} |")
    print("|---|---|---|---|")
    for label, kind, key, fmt, _better in rows:
        if kind not in results["meshgate"][0]:
            continue
        m, n = med("meshgate", kind, key), med(other, kind, key)
        print(f"| {label} | {fmt.format(m)} | {fmt.format(n)} | {m / n:.2f} |")
    if "idle" in args.only:
        m, n = med_idle("meshgate"), med_idle(other)
        ratio = f"{m / n:.2f}" if n > 0 else "n/a"
        print(f"| memory per idle mTLS connection (KiB) | {m:.1f} | {n:.1f} | {ratio} |")
    kinds = ("keepalive", "handshake", "two_hop")
    errors = {name: sum(r[k]["errors"] for r in results[name] for k in kinds if k in r) for name in results}
    print(f"\nfailed requests: meshgate {errors['meshgate']}, {other} {errors[other]}")
    print("\nraw rounds (JSON):")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
