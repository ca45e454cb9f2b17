#!/usr/bin/env python3
"""Side-by-side load bench: meshgate, nginx and HAProxy terminating the same mTLS, proxying to
the same backend, driven by the same load generator (oha) with a client certificate.

Like with like:
  * one worker each (`meshgate run --concurrency 1`, nginx `worker_processes 1`, HAProxy
    `nbthread 1`), pinned to core 0; the load generator and the backend share core 1;
  * TLS 1.3 only, key exchange X25519 only, the same leaves (ECDSA P-256, or RSA 2048 with
    --key-type rsa; the CAs stay ECDSA P-256) for the gateway and the client;
  * session resumption off on all three (every --disable-keepalive connection is a full
    handshake with client-certificate verification), except in the `resumed` part, where all
    three resume alike: stateful TLS 1.3 tickets naming a session in the server's cache
    (meshgate `sessionResumption: true`, nginx `ssl_session_cache` without ticket keys, HAProxy
    its session cache with `no-tls-tickets`); each proxy start is first checked to resume
    (or not) as its part says;
  * each proxy offers ALPN h2 and http/1.1 (meshgate always does); oha sends no ALPN for
    HTTP/1.1 and `h2` for HTTP/2; keep-alive HTTP/1.1 upstream connections to the backend;
  * the backend is a third process (nginx answering `200 ok` from memory) on core 1.

Parts (--only):
  keepalive  keep-alive HTTP/1.1, --connections connections, as fast as they go;
  steady     the same connections at a fixed --rate (oha -q with --latency-correction: a
             request is timed from when the schedule wanted it sent), for the tail latency;
  h2         keep-alive HTTP/2: --h2-connections connections, each with --connections /
             --h2-connections concurrent streams, so as many requests in flight as keepalive;
  handshake  a new connection per request (--disable-keepalive), --handshake-connections at
             a time, resumption off; once per --key-type;
  resumed    the same with resumption on, on at most OHA_TICKETS (8) connections: oha's rustls
             client keeps one session cache for all its connections, with up to 8 tickets per
             server name, so every handshake but the first of each connection slot resumes;
             once per --key-type;
  two-hop    client -> source proxy (plaintext) -> ISTIO_MUTUAL -> gateway -> backend, the
             upstream mTLS connections pooled (no HAProxy configuration);
  idle       memory per idle mTLS connection (below).

Each proxy is started once for the parts of the first key type without resumption, once more
for each further key type's full handshakes, and once per key type with resumption on; each
start gets a 2 s keep-alive warm-up. Runs alternate meshgate, nginx, HAProxy, meshgate, ...
and the median of the rounds is reported with their range, each figure also as a ratio
against the better of the two peers. Needs: oha (`cargo install oha --locked`), nginx and
haproxy (Debian packages), taskset, and a release build of meshgate (built here if missing).

Idle memory: n mTLS connections complete their handshake (RSS growth / n: "handshake only"),
then each sends one keep-alive request and reads its response, one connection at a time, and
all stay open and idle for 2.5 s (RSS growth / n again: "after one request"). The connections are held by client
processes on core 1, at most IDLE_PER_CLIENT each, from their own loopback source address.

Usage: python3 benches/load/bench.py [--duration 10] [--rounds 3] [--connections 64]
       python3 benches/load/bench.py --only steady,h2 --rate 5000 --h2-connections 8
       python3 benches/load/bench.py --only handshake,resumed --key-type ecdsa,rsa
       python3 benches/load/bench.py --baseline OLD_BINARY   # two meshgate builds, alternating
       python3 benches/load/bench.py --only idle --idle-counts 5000,20000,50000   # linearity
"""

import argparse
import collections
import json
import multiprocessing
import os
import resource
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
HAPROXY_PORT = 20443
BACKEND_PORT = 18080
ADMIN_PORT = 15900
OUTBOUND_PORT = 15901
SOURCE_ADMIN_PORT = 15910
NGINX_OUTBOUND_PORT = 19001
GATEWAY_ID = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway"
CLIENT_ID = "spiffe://example.com/ns/default/sa/sleep"
TICKS = os.sysconf("SC_CLK_TCK")


PARTS = ("keepalive", "steady", "h2", "handshake", "resumed", "two-hop", "idle")
PEERS = ("nginx", "haproxy")
# The leaves' keys, as `meshgate pki workload` issues them (`--rsa` for RSA 2048).
KEY_TYPES = {"ecdsa": "ECDSA P-256", "rsa": "RSA 2048"}
# What one start of a proxy serves with: `keys` the directory holding the gateway's leaf
# (gateway/) and the client's (client/) of one key type, `resumption` whether TLS 1.3 sessions
# are resumed.
Tls = collections.namedtuple("Tls", "keys resumption")
REQUEST = f"GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
# TLS 1.3 tickets oha's rustls client keeps per server name (the newest taken first, each
# once). With more connections than this, more of them can end in one burst than there are
# tickets for the next ones, which then start with a full handshake (15% of meshgate's at 16
# connections): the resumed part runs at most this many, and then every handshake but the
# first of each connection slot resumes.
OHA_TICKETS = 8
# Connections one client process holds (each needs a file descriptor).
IDLE_PER_CLIENT = 9000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    ap.add_argument("--rate", type=int, default=5000, help="requests/s of the steady part")
    ap.add_argument(
        "--h2-connections",
        type=int,
        default=8,
        help="HTTP/2 connections, each with --connections / --h2-connections streams",
    )
    ap.add_argument("--handshake-connections", type=int, default=16)
    ap.add_argument(
        "--key-type",
        default="ecdsa",
        help="comma-separated leaf keys: " + ", ".join(KEY_TYPES)
        + "; the first for every part, each further one for handshake and resumed again",
    )
    ap.add_argument("--idle-connections", type=int, default=500)
    ap.add_argument(
        "--idle-counts",
        help="comma-separated connection counts: idle memory only, each count on a fresh process"
        " of each proxy, to check that memory grows linearly (e.g. 5000,20000,50000)",
    )
    ap.add_argument("--peers", default=",".join(PEERS), help="peers beside meshgate: " + ", ".join(PEERS))
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
    args.peers = [p for p in args.peers.split(",") if p]
    if not set(args.peers) <= set(PEERS):
        sys.exit(f"--peers takes {', '.join(PEERS)}")
    args.key_types = [k for k in args.key_type.split(",") if k]
    if not args.key_types or not set(args.key_types) <= set(KEY_TYPES):
        sys.exit(f"--key-type takes {', '.join(KEY_TYPES)}")
    if "h2" in args.only and args.connections % args.h2_connections:
        sys.exit("--connections must be a multiple of --h2-connections")
    others = ["baseline"] if args.baseline else args.peers
    if args.idle_counts:
        args.idle_counts = [int(n) for n in args.idle_counts.split(",")]
        args.only = {"idle"}
    # Every idle connection is a descriptor in the proxy: as many as the hard limit allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    for tool in ("oha", "nginx", "taskset") + (("haproxy",) if "haproxy" in others else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="meshgate-bench-")
    try:
        pki(args.binary, work, args.key_types)
        backend = start_backend(work)
        try:
            if args.idle_counts:
                idle_counts(args, work, others)
                return
            results = {name: [] for name in ["meshgate", *others]}
            for r in range(args.rounds):
                for name in results:
                    print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
                    one_hop = run_proxy(name, args, work)
                    if "two-hop" in args.only and name != "haproxy":
                        one_hop["two_hop"] = run_two_hop(name, args, work)
                    results[name].append(one_hop)
            report(results, args)
        finally:
            stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pki(binary, work, key_types):
    """A shared root and the two meshes' CAs (ECDSA P-256), then per key type the gateway's
    leaf and the client's with that key, in {work}/{key type}/gateway and .../client. The keys
    are PKCS#8 PEM (`BEGIN PRIVATE KEY`), RSA as ECDSA, which nginx, HAProxy (OpenSSL), oha
    (rustls) and Python's ssl all read."""
    def mg(*a):
        subprocess.run([binary, *a], check=True, stdout=subprocess.DEVNULL)

    mg("pki", "root", "--out", f"{work}/root")
    mg("pki", "intermediate", "--root", f"{work}/root", "--trust-domain", "example-target.com", "--out", f"{work}/target")
    mg("pki", "intermediate", "--root", f"{work}/root", "--trust-domain", "example.com", "--out", f"{work}/source")
    for key_type in key_types:
        keys = f"{work}/{key_type}"
        rsa = ["--rsa"] if key_type == "rsa" else []
        mg("pki", "workload", "--ca", f"{work}/target", "--spiffe-id", GATEWAY_ID, "--dns", f"*.example-target.com", *rsa, "--out", f"{keys}/gateway")
        mg("pki", "workload", "--ca", f"{work}/source", "--spiffe-id", CLIENT_ID, *rsa, "--out", f"{keys}/client")
        # HAProxy takes the chain and its key in one file.
        with open(f"{keys}/gateway/haproxy.pem", "w") as out:
            for part in ("cert-chain.pem", "key.pem"):
                with open(f"{keys}/gateway/{part}") as f:
                    out.write(f.read())


def default_tls(args, work):
    """The first key type's leaves, resumption off: what every part but the other key types'
    handshakes and the resumed handshakes runs with."""
    return Tls(f"{work}/{args.key_types[0]}", False)


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


def meshgate_config(work, tls):
    d = f"{work}/meshgate"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/config.yaml", "w") as f:
        f.write(f"""
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: bench, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: {tls.keys}/gateway/cert-chain.pem, privateKey: {tls.keys}/gateway/key.pem, rootCerts: {tls.keys}/gateway/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{443: {MESHGATE_PORT}}}}}
  admin: {{address: "127.0.0.1:{ADMIN_PORT}"}}
  # On: stateful TLS 1.3 tickets, each naming a session kept in the listener's cache.
  tls: {{sessionResumption: {str(tls.resumption).lower()}}}
  # No cap of its own (10 000 by default), as nginx's worker_connections and HAProxy's
  # maxconn leave room for every idle connection the memory parts open.
  limits: {{maxConnectionsPerListener: 0}}
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
  # An HTTPS server offers ALPN h2 and http/1.1 (and Istio's own).
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


def nginx_proxy_config(work, tls):
    # Resumption as meshgate's: no ticket keys, so TLS 1.3 tickets name a session in the cache.
    sessions = "shared:SSL:10m" if tls.resumption else "off"
    return nginx(work, "nginx-proxy", f"""
user root;
worker_processes 1;
daemon off;
pid {work}/nginx-proxy/nginx.pid;
error_log {work}/nginx-proxy/logs/error.log warn;
events {{ worker_connections 60000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  # Thousands of connections take minutes to open; each waits for its request meanwhile.
  client_header_timeout 600s;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} ssl http2 backlog=4096;
    ssl_certificate {tls.keys}/gateway/cert-chain.pem;
    ssl_certificate_key {tls.keys}/gateway/key.pem;
    ssl_client_certificate {tls.keys}/gateway/root-cert.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_session_tickets off;
    ssl_session_cache {sessions};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-forwarded-client-cert $ssl_client_s_dn;
    }}
  }}
}}
""")


def haproxy_config(work, tls):
    """HAProxy 2.6 as the nginx config above: one thread, the same mTLS (client certificate
    required and verified to the same root, TLS 1.3, X25519, ALPN h2 and http/1.1), the
    client's subject and certificate fingerprint passed on as headers, keep-alive to the
    backend. `no-tls-tickets` always: with its session cache (on by default, size 0 turns it
    off) TLS 1.3 tickets name a cached session, as meshgate's and nginx's do."""
    d = f"{work}/haproxy"
    sessions = "" if tls.resumption else "tune.ssl.cachesize 0"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/haproxy.cfg", "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 60000
  # As many descriptors as the limit allows, not the 120 000 that maxconn asks for.
  no strict-limits
  {sessions}
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
defaults
  mode http
  maxconn 60000
  option http-keep-alive
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
  # As nginx's client_header_timeout above: the first request may come minutes later.
  timeout http-request 600s
frontend gateway
  bind 127.0.0.1:{HAPROXY_PORT} ssl crt {tls.keys}/gateway/haproxy.pem ca-file {tls.keys}/gateway/root-cert.pem verify required curves X25519 alpn h2,http/1.1 backlog 4096
  http-request set-header x-ssl-client-subject %[ssl_c_s_dn]
  http-request set-header x-ssl-client-sha256 %[ssl_c_der,sha2(256),hex]
  default_backend backend
backend backend
  http-reuse always
  server backend 127.0.0.1:{BACKEND_PORT} maxconn 128
""")
    return f"{d}/haproxy.cfg"


def binary(name, args):
    """The meshgate binary that runs as `name`, or None for nginx and HAProxy."""
    return {"meshgate": args.binary, "baseline": args.baseline}.get(name)


def start_proxy(name, args, work, tls):
    if binary(name, args):
        cmd = ["taskset", "-c", "0", binary(name, args), "run", "--concurrency", "1", "-c", meshgate_config(work, tls)]
        port = MESHGATE_PORT
        env = dict(os.environ, MESHGATE_LOG="warn")
    elif name == "haproxy":
        cmd = ["taskset", "-c", "0", "haproxy", "-db", "-f", haproxy_config(work, tls)]
        port = HAPROXY_PORT
        env = None
    else:
        cmd = ["taskset", "-c", "0", "nginx", "-p", nginx_proxy_config(work, tls), "-c", "nginx.conf"]
        port = NGINX_PORT
        env = None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port)
    return proc, port


def run_proxy(name, args, work):
    """The one-hop parts on `name`, one start of the proxy per key type and resumption setting
    (`plan`), each checked to resume or not as it should and warmed up first."""
    out = {}
    for tls, parts in plan(args, work):
        proc, port = start_proxy(name, args, work, tls)
        try:
            pids = family(proc.pid)
            client = f"{tls.keys}/client"
            if resumes(port, client) != tls.resumption:
                sys.exit(f"{name} {'does not resume' if tls.resumption else 'resumes'} TLS sessions")
            oha(port, 2, args.connections, client)  # warm-up
            for part in parts:
                if part == "idle":
                    handshake, request = idle_memory(pids, port, client, args.idle_connections)
                    out["idle"] = {"handshake": handshake, "request": request}
                    continue
                conns, flags = load(part, args)
                key = f"{part}/{os.path.basename(tls.keys)}" if part in ("handshake", "resumed") else part
                out[key] = measure(pids, lambda: oha(port, args.duration, conns, client, flags))
        finally:
            stop(proc)
    return out


def plan(args, work):
    """(Tls, parts) for each start of a proxy: the first key type without resumption for the
    parts that --only names (idle last), each further key type for its full handshakes, then
    each key type with resumption on for its resumed handshakes."""
    first = default_tls(args, work)
    steps = [(first, [p for p in ("keepalive", "steady", "h2", "handshake", "idle") if p in args.only])]
    if "handshake" in args.only:
        steps += [(Tls(f"{work}/{k}", False), ["handshake"]) for k in args.key_types[1:]]
    if "resumed" in args.only:
        steps += [(Tls(f"{work}/{k}", True), ["resumed"]) for k in args.key_types]
    return [(tls, parts) for tls, parts in steps if parts]


def load(part, args):
    """oha's connection count and flags for a part measured with oha."""
    return {
        "keepalive": (args.connections, []),
        # Timed from when the schedule wanted each request sent: a stall shows in the tail.
        "steady": (args.connections, ["-q", str(args.rate), "--latency-correction"]),
        # oha runs -c connections with -p concurrent streams each.
        "h2": (args.h2_connections, ["--http2", "-p", str(args.connections // args.h2_connections)]),
        "handshake": (args.handshake_connections, ["--disable-keepalive"]),
        "resumed": (min(args.handshake_connections, OHA_TICKETS), ["--disable-keepalive"]),
    }[part]


def measure(pids, run):
    """oha's figures for one run, and the CPU time of `pids` over it per answered request."""
    cpu0 = cpu_seconds(pids)
    res = run()
    cpu = cpu_seconds(pids) - cpu0
    ok = res["statusCodeDistribution"].get("200", 0)
    latency = res["latencyPercentiles"]
    return {
        "rps": res["summary"]["requestsPerSec"],
        "p50_ms": latency["p50"] * 1000,
        "p99_ms": latency["p99"] * 1000,
        "p99.9_ms": latency["p99.9"] * 1000,
        "cpu_us_per_req": cpu / max(ok, 1) * 1e6,
        "ok": ok,
        "errors": failures(res),
    }


def resumes(port, client):
    """Whether a second connection resumes the TLS 1.3 session of a first one, which made a
    request (the tickets come after the client's certificate is verified)."""
    ctx = client_context(client)
    session, reused = None, False
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", port))
        with ctx.wrap_socket(s, server_hostname=HOST, session=session) as t:
            t.sendall(REQUEST)
            read_response(t)
            session, reused = t.session, t.session_reused
    return reused


def source_config(work, tls, h2=False):
    """The source proxy's configuration; `h2`: the DestinationRule upgrades to HTTP/2
    (`connectionPool.http.h2UpgradePolicy: UPGRADE`), so the pooled mTLS connections to the
    gateway multiplex requests."""
    pool = ", connectionPool: {http: {h2UpgradePolicy: UPGRADE}}" if h2 else ""
    d = f"{work}/source"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/config.yaml", "w") as f:
        f.write(f"""
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: source, namespace: default}}
spec:
  identity: {{certChain: {tls.keys}/client/cert-chain.pem, privateKey: {tls.keys}/client/key.pem, rootCerts: {tls.keys}/client/root-cert.pem}}
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
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}{pool}}}
""")
    return f"{d}/config.yaml"


def nginx_outbound_config(work, tls):
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
      proxy_ssl_certificate {tls.keys}/client/cert-chain.pem;
      proxy_ssl_certificate_key {tls.keys}/client/key.pem;
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
    tls = default_tls(args, work)
    gateway, _ = start_proxy(name, args, work, tls)
    if binary(name, args):
        cmd = ["taskset", "-c", "0", binary(name, args), "run", "--concurrency", "1", "-c", source_config(work, tls)]
        port = OUTBOUND_PORT
        env = dict(os.environ, MESHGATE_LOG="warn")
    else:
        cmd = ["taskset", "-c", "0", "nginx", "-p", nginx_outbound_config(work, tls), "-c", "nginx.conf"]
        port = NGINX_OUTBOUND_PORT
        env = None
    source = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port)
    try:
        pids = family(gateway.pid) + family(source.pid)
        oha(port, 2, args.connections)  # warm-up, and the pooled upstream connections
        return measure(pids, lambda: oha(port, args.duration, args.connections))
    finally:
        stop(source)
        stop(gateway)


def failures(res):
    """Transport errors and every response that is not a 200. oha cuts the requests in flight
    when -z runs out ("aborted due to deadline", one per connection): not a failure."""
    transport = sum(v for k, v in res.get("errorDistribution", {}).items() if k != "aborted due to deadline")
    not_ok = sum(v for code, v in res["statusCodeDistribution"].items() if code != "200")
    return transport + not_ok


def oha(port, duration, conns, client=None, flags=()):
    """oha on core 1 for `duration` seconds over `conns` connections: mTLS with the client's
    leaf in the directory `client`, or plaintext HTTP/1.1 without one."""
    cmd = [
        "taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
        "-z", f"{duration}s", "-c", str(conns), *flags,
    ]
    if client:
        cmd += [
            "--cacert", f"{client}/root-cert.pem",
            "--cert", f"{client}/cert-chain.pem",
            "--key", f"{client}/key.pem",
            "--connect-to", f"{HOST}:{port}:127.0.0.1:{port}",
            f"https://{HOST}:{port}/",
        ]
    else:
        cmd += ["--connect-to", f"{HOST}:80:127.0.0.1:{port}", f"http://{HOST}/"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def idle_memory(pids, port, client, n):
    """RSS growth per idle mTLS connection (KiB): n handshakes completed and nothing sent,
    then the same n after one keep-alive request each. Returns (handshake only, after one
    request)."""
    time.sleep(0.5)
    before = rss_kib(pids)
    clients = []
    try:
        for i in range(0, n, IDLE_PER_CLIENT):
            here, there = multiprocessing.Pipe()
            count = min(IDLE_PER_CLIENT, n - i)
            source = f"127.0.0.{2 + i // IDLE_PER_CLIENT}"
            proc = multiprocessing.Process(target=idle_client, args=(there, port, client, count, source))
            proc.start()
            clients.append((proc, here))
        for proc, pipe in clients:
            expect(pipe, "open")
        # TLS 1.3: the server verifies the client certificate after the client's Finished; a
        # short wait lets every connection reach the idle state.
        time.sleep(1.0)
        handshake = rss_kib(pids)
        for proc, pipe in clients:
            pipe.send("request")
            expect(pipe, "requested")
        # meshgate parks an HTTP/1.1 connection idle for 1 to 2 s (without hyper's buffers):
        # the reading is of connections idle for at least 2.5 s, on every proxy.
        time.sleep(2.5)
        request = rss_kib(pids)
    finally:
        for proc, pipe in clients:
            pipe.send("close")
        for proc, pipe in clients:
            proc.join(timeout=60)
    return (handshake - before) / n, (request - before) / n


def expect(pipe, what):
    got = pipe.recv()
    if got != what:
        sys.exit(f"idle client: {got}")


def client_context(client):
    """Python's TLS client with the client's leaf in the directory `client`: TLS 1.3, ALPN
    http/1.1."""
    ctx = ssl.create_default_context(cafile=f"{client}/root-cert.pem")
    ctx.load_cert_chain(f"{client}/cert-chain.pem", f"{client}/key.pem")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def idle_client(pipe, port, client, n, source):
    """Holds n mTLS connections from `source`: opens them, then (when asked) sends one
    request on each and reads its response, then keeps them open until told to close."""
    os.sched_setaffinity(0, {1})
    ctx = client_context(client)
    conns = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            conns.append(ctx.wrap_socket(s, server_hostname=HOST))
        pipe.send("open")
        if pipe.recv() != "request":
            return
        for t in conns:
            t.sendall(REQUEST)
            read_response(t)
        pipe.send("requested")
        pipe.recv()
    except Exception as e:  # the parent reports it and stops
        pipe.send(f"{type(e).__name__}: {e}")
    finally:
        for t in conns:
            t.close()


def read_response(t):
    """Reads one response with a content-length body (the backend's `ok`)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = t.recv(4096)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = t.recv(4096)
        if not chunk:
            raise ConnectionError("closed in a response body")
        body += chunk


def idle_counts(args, work, others):
    """Idle memory at each of the counts, on a fresh process of each proxy per count and
    round, to see whether it grows linearly."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    results = {}
    for n in args.idle_counts:
        if n + 100 > soft:
            print(f"{n} connections: skipped, the open-file limit is {soft} (`ulimit -Hn`)", file=sys.stderr)
            continue
        for r in range(args.rounds):
            for name in ["meshgate", *others]:
                print(f"{n} idle connections, round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
                tls = default_tls(args, work)
                proc, port = start_proxy(name, args, work, tls)
                try:
                    pids = family(proc.pid)
                    oha(port, 2, args.connections, f"{tls.keys}/client")  # warm-up
                    handshake, request = idle_memory(pids, port, f"{tls.keys}/client", n)
                finally:
                    stop(proc)
                results.setdefault(n, {}).setdefault(name, []).append((handshake, request))
    names = ["meshgate", *others]
    print(f"\nidle memory per mTLS connection (KiB), median of {args.rounds} rounds [range]\n")
    print("| connections | state | " + " | ".join(names) + " | meshgate/better peer |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for n, by_name in results.items():
        for i, state in enumerate(("handshake only", "after one request")):
            cells, meds = [], {}
            for name in names:
                vals = [v[i] for v in by_name[name]]
                meds[name] = statistics.median(vals)
                cells.append(f"{meds[name]:.1f} [{min(vals):.1f}-{max(vals):.1f}]")
            better = min(meds[o] for o in others)
            ratio = f"{meds['meshgate'] / better:.2f}" if better > 0 else "n/a"
            print(f"| {n} | {state} | " + " | ".join(cells) + f" | {ratio} |")
    print("\nraw rounds (JSON, [handshake only, after one request]):")
    print(json.dumps(results, indent=1))


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
    return sum(user_system(pids))


def user_system(pids):
    """User and system CPU seconds of `pids` so far, from /proc (10 ms ticks)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / TICKS, system / TICKS


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


# A figure of a part: its row label, format, and which way is better.
FIGURES = {
    "rps": ("requests/s", "{:.0f}", max),
    "p50_ms": ("p50 latency (ms)", "{:.2f}", min),
    "p99_ms": ("p99 latency (ms)", "{:.2f}", min),
    "p99.9_ms": ("p99.9 latency (ms)", "{:.2f}", min),
    "cpu_us_per_req": ("CPU per request (µs)", "{:.1f}", min),
    "handshake": ("handshake only (KiB)", "{:.1f}", min),
    "request": ("after one request (KiB)", "{:.1f}", min),
}


def parts(args):
    """(result key, title, figures) of every part, in the order of the report."""
    tail = ("rps", "p50_ms", "p99_ms", "p99.9_ms", "cpu_us_per_req")
    median = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")

    def conns(part):
        return f"{load(part, args)[0]} connections"

    streams = args.connections // args.h2_connections
    out = [
        ("keepalive", f"keep-alive HTTP/1.1, {conns('keepalive')}", tail),
        ("steady", f"keep-alive HTTP/1.1 at {args.rate}/s, {conns('steady')}", tail),
        ("h2", f"keep-alive HTTP/2, {conns('h2')} x {streams} streams", ("rps", "p99_ms", "cpu_us_per_req")),
    ]
    for k in args.key_types:
        out += [
            (f"handshake/{k}", f"full handshake per request, {KEY_TYPES[k]}, {conns('handshake')}", median),
            (f"resumed/{k}", f"resumed handshake per request, {KEY_TYPES[k]}, {conns('resumed')}", median),
        ]
    out += [
        ("two_hop", f"two hops, keep-alive, {args.connections} connections, CPU of both proxies", median),
        ("idle", f"memory per idle mTLS connection, {args.idle_connections} connections", ("handshake", "request")),
    ]
    return out


def report(results, args):
    names = list(results)
    others = names[1:]

    def med(name, kind, key):
        return statistics.median(r[kind][key] for r in results[name])

    def spread(name, kind, key):
        vals = [r[kind][key] for r in results[name]]
        return min(vals), max(vals)

    print(f"\n{args.rounds} rounds of {args.duration}s, median [range]; TLS 1.3, X25519, {KEY_TYPES[args.key_types[0]]} leaves unless a row names the key\n")
    against = others[0] if len(others) == 1 else "better peer"
    print("| metric | " + " | ".join(names) + f" | meshgate/{against} |")
    print("|---|" + "---|" * (len(names) + 1))
    for kind, title, keys in parts(args):
        have = [n for n in names if all(kind in r for r in results[n])]
        if "meshgate" not in have:
            continue
        for key in keys:
            label, fmt, better = FIGURES[key]
            cells = []
            for n in names:
                if n in have:
                    lo, hi = spread(n, kind, key)
                    cells.append(f"{fmt.format(med(n, kind, key))} [{fmt.format(lo)}-{fmt.format(hi)}]")
                else:
                    cells.append("-")
            peers = [med(n, kind, key) for n in others if n in have]
            m = med("meshgate", kind, key)
            best = better(peers) if peers else None
            ratio = f"{m / best:.2f}" if best else "n/a"
            print(f"| {title}: {label} | " + " | ".join(cells) + f" | {ratio} |")
    errors = {name: sum(v.get("errors", 0) for r in results[name] for v in r.values()) for name in results}
    print("\nfailed requests: " + ", ".join(f"{n} {errors[n]}" for n in names))
    print("\nraw rounds (JSON):")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
