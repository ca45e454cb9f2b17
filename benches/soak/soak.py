#!/usr/bin/env python3
"""Soak test: two meshes on this machine under steady load and scheduled faults, for minutes.

The setup is the README's demo, on 127.0.0.1 with free ports:

  app (oha) -> source-mesh sidecar (meshgate, outbound listener, plaintext)
            -> ISTIO_MUTUAL -> target-mesh gateway (meshgate, ISTIO_MUTUAL Gateway)
            -> backend (`meshgate echo`)

one shared root, one intermediate CA per mesh (example-target.com, example.com) and a workload
leaf per proxy, all from `meshgate pki`. The leaves sit in Kubernetes' file-mounted Secret
layout (`cert-chain.pem -> ..data/cert-chain.pem`, `..data -> ..<timestamp>/`), so a rotation
swaps all three files at once with one rename.

Load, all at once for the whole run (oha in segments of one minute, JSON output per segment):
  * keep-alive through both hops at a fixed rate (`-q 500 -c 8`);
  * a new connection per request (`--disable-keepalive`) straight at the gateway with a client
    certificate (50/s), and through the sidecar (25/s);
  * slowloris: 200 mTLS connections to the gateway, half sending a request head one byte per
    second and never finishing it, half sending nothing; each is opened again when the
    gateway closes it (its requestHeaderTimeout and idleTimeout at work).

Faults, on a schedule: both proxies' leaves re-issued and swapped every minute, the gateway's
VirtualService rewritten every 30 s (a response header with a generation number, and a route
that comes and goes), the backend stopped and started again every 5 minutes. Each reload is
checked: the reload counter went up and the failure counter did not, `/certs` shows the new
serial, the gateway serves the new leaf on a fresh handshake, the sidecar presents its new leaf
(the XFCC `Hash=` the backend receives), the new header and route answer.

Failed requests are read from both proxies' access logs (the first hop's line decides): those
from 1 s before a backend stop until 2 s after the backend answers again are caused on purpose;
every other one, and every transport error oha reports, is a real failure.

Every 10 s: VmRSS and open file descriptors of both proxies, reload counters. At the end, a
report (benches/soak/results-<date>.md and .json) and the exit status: non-zero on any real
failure, failed or unverified reload, dropped access log line, slowloris handshake failure or
slowloris kind never closed by the gateway, or (runs of 10 minutes or more without --fast) a
least-squares RSS/fd slope over the last two thirds of the run above --max-rss-slope /
--max-fd-slope. The thresholds and the results of a 30-minute run: benches/soak/README.md.

Usage: python3 benches/soak/soak.py [--minutes 30] [--binary target/release/meshgate]
       python3 benches/soak/soak.py --minutes 3 --fast    # every period scaled by minutes/30
Needs oha (`cargo install oha --locked`) and a release build of meshgate.
"""

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "load"))
import bench  # noqa: E402

ROOT = bench.ROOT
HOST = bench.HOST
GATEWAY_ID = bench.GATEWAY_ID
SIDECAR_ID = bench.CLIENT_ID  # spiffe://example.com/ns/default/sa/sleep
LOADGEN_ID = "spiffe://example.com/ns/default/sa/loadgen"

# Load kinds, by request path. The first hop's access log decides whether a request failed.
KINDS = {
    "keepalive": {"path": "/soak/keepalive", "first_hop": "sidecar"},
    "newconn-gateway": {"path": "/soak/newconn-gateway", "first_hop": "gateway"},
    "newconn-sidecar": {"path": "/soak/newconn-sidecar", "first_hop": "sidecar"},
    "probe-gateway": {"path": "/soak/probe-gateway", "first_hop": "gateway"},
    "probe-sidecar": {"path": "/soak/probe-sidecar", "first_hop": "sidecar"},
    "probe-toggle": {"path": "/soak-toggle", "first_hop": "gateway"},
}
PATH_KIND = {v["path"]: k for k, v in KINDS.items()}

# Base periods (seconds) of a 30-minute run; --fast multiplies them by minutes/30.
BASE = {
    "segment": 60.0,  # one oha run per load kind, one row of the per-minute table
    "sample": 10.0,  # RSS, fds, counters
    "rotate": 60.0,  # both leaves re-issued
    "rotate_at": 30.0,  # offset in its period
    "config": 30.0,  # the gateway's VirtualService rewritten
    "config_at": 15.0,
    "restart": 300.0,  # the backend stopped and started again
    "restart_at": 157.0,  # 37 s into a minute: between a rotation (30) and a config change (45)
    "backend_down": 1.0,  # how long the backend stays stopped
    "poll": 2.0,  # MeshGateway reload.pollInterval (meshgate's default)
    "header_timeout": 10.0,  # gateway limits.requestHeaderTimeout (slowloris, slow head)
    "idle_timeout": 60.0,  # gateway limits.idleTimeout (slowloris, silent)
    "byte_every": 1.0,  # a slow head's pace
}
MINIMUM = {"sample": 1.0, "segment": 5.0, "poll": 0.2, "header_timeout": 1.0, "idle_timeout": 2.0,
           "byte_every": 0.1, "backend_down": 0.5}

WINDOW_BEFORE = 1.0  # a backend stop's window opens this long before the stop
WINDOW_AFTER = 2.0  # and closes this long after the backend answers again


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fast", action="store_true", help="scale every period by minutes/30")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/meshgate"))
    ap.add_argument("--rate", type=int, default=500, help="keep-alive requests/s through both hops")
    ap.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    ap.add_argument("--newconn-rate", type=int, default=50, help="new connections/s at the gateway")
    ap.add_argument("--sidecar-newconn-rate", type=int, default=25, help="new connections/s at the sidecar")
    ap.add_argument("--slowloris", type=int, default=200, help="slow/idle mTLS connections to the gateway")
    ap.add_argument("--max-rss-slope", type=float, default=256.0,
                    help="KiB per minute, least squares over the last two thirds, per proxy")
    ap.add_argument("--max-fd-slope", type=float, default=1.0,
                    help="open fds per minute, least squares over the last two thirds, per proxy")
    ap.add_argument("--results", default=HERE, help="where results-<date>.md/.json go")
    ap.add_argument("--work", help="working directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs, certs)")
    args = ap.parse_args()

    if not shutil.which("oha"):
        sys.exit("oha not found: cargo install oha --locked")
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: cargo build --release")
    args.binary = os.path.abspath(args.binary)

    scale = args.minutes / 30.0 if args.fast else 1.0
    periods = {k: max(v * scale, MINIMUM.get(k, 0.0)) for k, v in BASE.items()}
    work = args.work or tempfile.mkdtemp(prefix="meshgate-soak-")
    os.makedirs(work, exist_ok=True)
    print(f"soak: {args.minutes:g} min, work dir {work}", file=sys.stderr)
    print("soak: periods " + ", ".join(f"{k}={v:g}s" for k, v in periods.items()), file=sys.stderr)

    soak = Soak(args, periods, work)
    ok = False
    try:
        soak.setup()
        soak.run()
        ok = soak.report()
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
    except Exception:
        traceback.print_exc()
    finally:
        soak.teardown()
        if ok and not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: working directory kept: {work}", file=sys.stderr)
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------------------------------------
# small helpers


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(taken):
    """A free port below the kernel's ephemeral range, so that no outgoing connection takes it
    as its source port while its process is down (the backend, between a stop and a start)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(1000):
        port = random.randint(20000, low - 1)
        if port in taken:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        taken.add(port)
        return port
    raise RuntimeError("no free port")


def write_atomic(path, text):
    """Write beside the file under a name meshgate does not read (no .yaml suffix), then rename."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def der_tlv(buf, pos):
    """(tag, start of content, end of content) of the DER element at pos."""
    tag = buf[pos]
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + n


def leaf_der(chain_path):
    with open(chain_path) as f:
        pem = f.read()
    end = "-----END CERTIFICATE-----"
    first = pem[: pem.index(end) + len(end)]
    return ssl.PEM_cert_to_DER_cert(first)


def serial_of(der):
    """The serial number of a DER certificate, lowercase hex without leading zeros."""
    _, c, _ = der_tlv(der, 0)  # Certificate
    _, t, _ = der_tlv(der, c)  # tbsCertificate
    tag, s, e = der_tlv(der, t)
    if tag == 0xA0:  # [0] version
        tag, s, e = der_tlv(der, e)
    return norm_serial(der[s:e].hex())


def norm_serial(text):
    return text.replace(":", "").lower().lstrip("0") or "0"


def http_get(url, timeout=3.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def prometheus(admin_port):
    """{(name, frozenset(labels)): value} of an admin /stats/prometheus."""
    _, text = http_get(f"http://127.0.0.1:{admin_port}/stats/prometheus")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, labels = head.split("{", 1)
            pairs = []
            for part in labels.rstrip("}").split('",'):
                if "=" in part:
                    k, v = part.split("=", 1)
                    pairs.append((k.strip(","), v.strip('"')))
            key = (name, frozenset(pairs))
        else:
            key = (head, frozenset())
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def metric(metrics, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return 0.0
    xs = [p[0] / 60.0 for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# HTTP probes, each on a fresh connection


def client_context(work):
    ctx = ssl.create_default_context(cafile=f"{work}/pki/root/root-cert.pem")
    ctx.load_cert_chain(f"{work}/pki/loadgen/cert-chain.pem", f"{work}/pki/loadgen/key.pem")
    return ctx


def read_response(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        body = out
    return status, headers, body


def request_bytes(path):
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


def probe_gateway(work, port, path):
    """status, headers, body, and the leaf the gateway served."""
    ctx = client_context(work)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as s:
            served = s.getpeercert(binary_form=True)
            s.sendall(request_bytes(path))
            status, headers, body = read_response(s)
    return status, headers, body, served


def probe_sidecar(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request_bytes(path))
        return read_response(s)


# ---------------------------------------------------------------------------------------------
# the soak


class Soak:
    def __init__(self, args, periods, work):
        self.args = args
        self.p = periods
        self.work = work
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.procs = {}  # name -> Popen (gateway, sidecar, backend)
        self.children = set()  # oha processes running
        self.threads = []
        self.ports = {}
        self.generation = 0
        self.segments = {k: [] for k in ("keepalive", "newconn-gateway", "newconn-sidecar")}
        self.samples = []  # dicts
        self.events = []  # dicts: kind, t, ok, detail
        self.windows = []  # [start, end] of backend restarts; end None while open
        self.failed_lines = []  # access log lines of failed requests
        self.log_counts = {}  # (proxy, kind) -> lines
        self.log_aborted = {}  # (proxy, kind) -> lines without a status (client went away)
        self.log_offsets = {}
        self.log_partial = {}
        self.slow = {"opened": 0, "handshake_failures": 0, "handshake_failure_reasons": {},
                     "closed": {"slow-head": 0, "silent": 0},
                     "lifetimes": {"slow-head": [], "silent": []},
                     "answers": {}}
        self.slow_loop = None
        self.t0 = None
        self.t_end = None

    # ---- setup ----

    def mg(self, *a):
        subprocess.run([self.args.binary, *a], check=True, stdout=subprocess.DEVNULL)

    def setup(self):
        w = self.work
        taken = set()
        for name in ("gateway", "gateway_admin", "sidecar", "sidecar_admin", "backend"):
            self.ports[name] = free_port(taken)
        # Shared root, one CA per mesh (bench.pki also issues two leaves we do not use).
        bench.pki(self.args.binary, f"{w}/pki")
        self.mg("pki", "workload", "--ca", f"{w}/pki/source", "--spiffe-id", LOADGEN_ID,
                "--out", f"{w}/pki/loadgen", "--hours", "48")
        for proxy in ("gateway", "sidecar"):
            os.makedirs(f"{w}/{proxy}/config", exist_ok=True)
            os.makedirs(f"{w}/{proxy}/certs", exist_ok=True)
            self.issue(proxy)
            for f in ("cert-chain.pem", "key.pem", "root-cert.pem"):
                os.symlink(f"..data/{f}", f"{w}/{proxy}/certs/{f}")
        self.write_gateway_config()
        self.write_vs()
        self.write_sidecar_config()
        for proxy in ("gateway", "sidecar"):
            r = subprocess.run([self.args.binary, "check", "-c", f"{w}/{proxy}/config"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"meshgate check {proxy}:\n{r.stdout}{r.stderr}")
        self.start_backend()
        self.start_proxy("gateway")
        self.start_proxy("sidecar")
        status, _, body = probe_sidecar(self.ports["sidecar"], KINDS["probe-sidecar"]["path"])
        if status != 200:
            raise RuntimeError(f"two hops do not answer 200: {status} {body[:200]!r}")
        log(f"up: gateway :{self.ports['gateway']} (admin :{self.ports['gateway_admin']}), "
            f"sidecar :{self.ports['sidecar']} (admin :{self.ports['sidecar_admin']}), "
            f"backend :{self.ports['backend']}")

    def issue(self, proxy):
        """A new leaf for a proxy, swapped in with one rename of `..data`. Returns the leaf's
        DER and the directory it replaced."""
        certs = f"{self.work}/{proxy}/certs"
        stamp = datetime.now(timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        new = f"{certs}/{stamp}"
        if proxy == "gateway":
            self.mg("pki", "workload", "--ca", f"{self.work}/pki/target", "--spiffe-id", GATEWAY_ID,
                    "--dns", "*.example-target.com", "--out", new, "--hours", "2")
        else:
            self.mg("pki", "workload", "--ca", f"{self.work}/pki/source", "--spiffe-id", SIDECAR_ID,
                    "--out", new, "--hours", "2")
        old = None
        if os.path.islink(f"{certs}/..data"):
            old = os.path.join(certs, os.readlink(f"{certs}/..data"))
        tmp = f"{certs}/..data_tmp"
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(stamp, tmp)
        os.replace(tmp, f"{certs}/..data")
        return leaf_der(f"{new}/cert-chain.pem"), old

    def write_gateway_config(self):
        d = f"{self.work}/gateway/config"
        p = self.p
        files = {
            "istio.yaml": """apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {name: default, namespace: kyma-system}
spec:
  config: {trustDomain: example-target.com}
""",
            "gateway.yaml": """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: multi-mesh-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: ["*.example-target.com"]
    tls: {mode: ISTIO_MUTUAL}
""",
            "service-entry.yaml": f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP, targetPort: {self.ports['backend']}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
""",
            "meshgateway.yaml": f"""apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: target-gateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity:
    certChain: ../certs/cert-chain.pem
    privateKey: ../certs/key.pem
    rootCerts: ../certs/root-cert.pem
  listen:
    address: 127.0.0.1
    portOverrides: {{443: {self.ports['gateway']}}}
  admin: {{address: "127.0.0.1:{self.ports['gateway_admin']}"}}
  accessLog: {{path: ../access.log}}
  reload: {{pollInterval: {p['poll'] * 1000:.0f}ms}}
  trust:
    trustDomains: [example-target.com, example.com]
    issuers:
    - {{certificate: ../../pki/target/ca-cert.pem, trustDomains: [example-target.com]}}
    - {{certificate: ../../pki/source/ca-cert.pem, trustDomains: [example.com]}}
  limits:
    requestHeaderTimeout: {p['header_timeout'] * 1000:.0f}ms
    idleTimeout: {p['idle_timeout'] * 1000:.0f}ms
""",
        }
        for name, text in files.items():
            write_atomic(f"{d}/{name}", text)

    def write_vs(self):
        """The gateway's VirtualService of this generation: a response header carrying the
        number, and on odd generations a direct-response route for /soak-toggle."""
        g = self.generation
        toggle = ""
        if g % 2:
            toggle = f"""  - name: soak-toggle
    match: [{{uri: {{exact: /soak-toggle}}}}]
    directResponse: {{status: 200, body: {{string: "toggle {g}\\n"}}}}
"""
        write_atomic(f"{self.work}/gateway/config/virtual-service.yaml", f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.example-target.com]
  gateways: [istio-system/multi-mesh-gateway]
  http:
{toggle}  - name: mesh-info
    match: [{{uri: {{exact: /mesh-info}}}}]
    directResponse: {{status: 200, body: {{string: "example-target.com gateway\\n"}}}}
  - name: httpbin
    headers: {{response: {{set: {{x-soak-generation: "{g}"}}}}}}
    route: [{{destination: {{host: httpbin.default.svc.cluster.local, port: {{number: 8000}}}}}}]
    timeout: 15s
""")

    def write_sidecar_config(self):
        d = f"{self.work}/sidecar/config"
        files = {
            "istio.yaml": """apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {name: default, namespace: kyma-system}
spec:
  config: {trustDomain: example.com}
""",
            "service-entry.yaml": f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-example-target, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  resolution: DNS
""",
            "destination-rule.yaml": f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin-example-target, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
""",
            "meshgateway.yaml": f"""apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: source-egress, namespace: default}}
spec:
  labels: {{app: sleep}}
  identity:
    certChain: ../certs/cert-chain.pem
    privateKey: ../certs/key.pem
    rootCerts: ../certs/root-cert.pem
  outbound: {{address: "127.0.0.1:{self.ports['sidecar']}"}}
  admin: {{address: "127.0.0.1:{self.ports['sidecar_admin']}"}}
  accessLog: {{path: ../access.log}}
  reload: {{pollInterval: {self.p['poll'] * 1000:.0f}ms}}
  resolve: [{{host: {HOST}, port: 443, address: "127.0.0.1:{self.ports['gateway']}"}}]
""",
        }
        for name, text in files.items():
            write_atomic(f"{d}/{name}", text)

    def start_backend(self):
        out = open(f"{self.work}/backend.log", "a")
        self.procs["backend"] = subprocess.Popen(
            [self.args.binary, "echo", "--listen", f"127.0.0.1:{self.ports['backend']}"],
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{self.ports['backend']}/", timeout=0.5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the backend does not answer")

    def start_proxy(self, name):
        out = open(f"{self.work}/{name}/stderr.log", "a")
        self.procs[name] = subprocess.Popen(
            [self.args.binary, "run", "-c", f"{self.work}/{name}/config"],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, MESHGATE_LOG="info"))
        out.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{self.ports[name + '_admin']}/ready", timeout=0.5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
            if self.procs[name].poll() is not None:
                break
        raise RuntimeError(f"{name} did not become ready; see {self.work}/{name}/stderr.log")

    # ---- the run ----

    def run(self):
        a, p = self.args, self.p
        duration = a.minutes * 60.0
        self.base_metrics = {n: prometheus(self.ports[n + "_admin"]) for n in ("gateway", "sidecar")}
        self.t0 = time.time()
        self.t_end = self.t0 + duration
        self.sample()
        loads = [
            ("keepalive", self.oha_keepalive),
            ("newconn-gateway", self.oha_newconn_gateway),
            ("newconn-sidecar", self.oha_newconn_sidecar),
        ]
        for kind, cmd in loads:
            self.spawn(self.load_loop, kind, cmd)
        self.spawn(self.slowloris)

        schedule = []
        for kind, period, at in (("rotate", p["rotate"], p["rotate_at"]),
                                 ("config", p["config"], p["config_at"]),
                                 ("restart", p["restart"], p["restart_at"])):
            t = at
            while t < duration - 1.0:
                schedule.append((t, kind))
                t += period
        t = p["sample"]
        while t < duration:
            schedule.append((t, "sample"))
            t += p["sample"]
        schedule.sort()
        log(f"running {a.minutes:g} min: {sum(1 for _, k in schedule if k == 'rotate')} rotations, "
            f"{sum(1 for _, k in schedule if k == 'config')} config changes, "
            f"{sum(1 for _, k in schedule if k == 'restart')} backend restarts scheduled")
        last_minute = -1
        for at, kind in schedule:
            wait = self.t0 + at - time.time()
            if wait > 0 and self.stop.wait(wait):
                break
            if kind == "sample":
                self.sample()
                minute = int((time.time() - self.t0) // 60)
                if minute != last_minute:
                    last_minute = minute
                    self.progress()
            elif kind == "rotate":
                self.spawn(self.rotate)
            elif kind == "config":
                self.spawn(self.change_config)
            elif kind == "restart":
                self.spawn(self.restart_backend)
            for name in ("gateway", "sidecar"):
                if self.procs[name].poll() is not None:
                    self.record("crash", False, f"{name} exited with {self.procs[name].returncode}")
                    self.stop.set()
        rest = self.t_end - time.time()
        if rest > 0:
            self.stop.wait(rest)
        log("load over; waiting for the last segments and checks")
        for t in self.threads:
            if t.name != "slowloris":
                t.join(timeout=max(60.0, p["segment"] + 30))
        self.sample()
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        self.final_metrics = {n: prometheus(self.ports[n + "_admin"]) for n in ("gateway", "sidecar")}
        self.read_logs()

    def spawn(self, fn, *a):
        name = fn.__name__
        t = threading.Thread(target=self.guard, args=(fn, *a), name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def guard(self, fn, *a):
        try:
            fn(*a)
        except Exception as e:  # a bug of the soak itself: reported, never silent
            traceback.print_exc()
            self.record("soak-error", False, f"{fn.__name__}: {e!r}")

    def record(self, kind, ok, detail="", **extra):
        with self.lock:
            self.events.append({"kind": kind, "t": round(time.time() - self.t0, 3), "ok": ok,
                                "detail": detail, **extra})
        if not ok:
            log(f"{kind}: FAILED {detail}")

    # ---- load ----

    def oha_keepalive(self, secs):
        return ["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-z", f"{secs:.3f}s",
                "-c", str(self.args.connections), "-q", str(self.args.rate),
                "--connect-to", f"{HOST}:80:127.0.0.1:{self.ports['sidecar']}",
                f"http://{HOST}{KINDS['keepalive']['path']}"]

    def oha_newconn_gateway(self, secs):
        w, port = self.work, self.ports["gateway"]
        return ["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-z", f"{secs:.3f}s",
                "-c", "4", "-q", str(self.args.newconn_rate), "--disable-keepalive",
                "--cacert", f"{w}/pki/root/root-cert.pem",
                "--cert", f"{w}/pki/loadgen/cert-chain.pem", "--key", f"{w}/pki/loadgen/key.pem",
                "--connect-to", f"{HOST}:{port}:127.0.0.1:{port}",
                f"https://{HOST}:{port}{KINDS['newconn-gateway']['path']}"]

    def oha_newconn_sidecar(self, secs):
        return ["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-z", f"{secs:.3f}s",
                "-c", "2", "-q", str(self.args.sidecar_newconn_rate), "--disable-keepalive",
                "--connect-to", f"{HOST}:80:127.0.0.1:{self.ports['sidecar']}",
                f"http://{HOST}{KINDS['newconn-sidecar']['path']}"]

    def load_loop(self, kind, cmd):
        """Back-to-back oha segments until the end of the run."""
        seg = self.p["segment"]
        i = 0
        while not self.stop.is_set():
            start = time.time()
            secs = min(seg, self.t_end - start)
            if secs < 1.0:
                break
            proc = subprocess.Popen(cmd(secs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            with self.lock:
                self.children.add(proc)
            out, err = proc.communicate()
            with self.lock:
                self.children.discard(proc)
            end = time.time()
            entry = {"i": i, "start": round(start - self.t0, 3), "end": round(end - self.t0, 3)}
            try:
                res = json.loads(out)
                codes = res.get("statusCodeDistribution", {})
                errors = res.get("errorDistribution", {})
                lat = res.get("latencyPercentiles", {})
                entry.update({
                    "codes": codes,
                    "errors": errors,
                    "transport_errors": sum(v for k, v in errors.items() if k != "aborted due to deadline"),
                    "aborted": errors.get("aborted due to deadline", 0),
                    "not_200": sum(v for c, v in codes.items() if c != "200"),
                    "rps": res["summary"].get("requestsPerSec"),
                    "p50_ms": ms(lat.get("p50")),
                    "p99_ms": ms(lat.get("p99")),
                    "p999_ms": ms(lat.get("p99.9")),
                    "slowest_ms": ms(res["summary"].get("slowest")),
                })
                # Answers of any status, and transport errors; not the requests oha cut off
                # in flight when the segment's time ran out.
                entry["requests"] = sum(codes.values()) + entry["transport_errors"]
            except (ValueError, KeyError, TypeError) as e:
                entry["oha_error"] = f"{e!r}: rc={proc.returncode} {err[-500:]}"
                log(f"{kind} segment {i}: oha output unreadable: {entry['oha_error']}")
            with self.lock:
                self.segments[kind].append(entry)
            i += 1

    # ---- slowloris ----

    def slowloris(self):
        loop = asyncio.new_event_loop()
        self.slow_loop = loop
        try:
            loop.run_until_complete(self.slowloris_main())
        finally:
            loop.close()

    async def slowloris_main(self):
        n = self.args.slowloris
        ctx = client_context(self.work)
        tasks = [asyncio.ensure_future(self.slow_conn(ctx, "slow-head" if i % 2 == 0 else "silent", i))
                 for i in range(n)]
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def slow_conn(self, ctx, mode, i):
        # Spread the first connections over a few seconds, as a pool warming up would.
        await asyncio.sleep(i * 0.02)
        head = (f"GET /soak/slow HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: soak\r\nX-Pad: "
                ).encode() + b"a" * 100000
        s = self.slow
        while not self.stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.ports["gateway"], ssl=ctx,
                                            server_hostname=HOST), timeout=15)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                reason = type(e).__name__ + (f": {e.reason}" if getattr(e, "reason", None) else "")
                with self.lock:
                    s["handshake_failures"] += 1
                    s["handshake_failure_reasons"][reason] = s["handshake_failure_reasons"].get(reason, 0) + 1
                await asyncio.sleep(1.0)
                continue
            with self.lock:
                s["opened"] += 1
            closed, answer = False, b""
            sent = 0
            # A lifetime counts from what starts the limit's clock: the head's first byte
            # (requestHeaderTimeout), or the handshake (idleTimeout runs from the accept).
            opened = time.time()
            try:
                if mode == "slow-head":
                    writer.write(head[:1])
                    sent = 1
                    await writer.drain()
                    opened = time.time()
                while not self.stop.is_set():
                    try:
                        if mode == "slow-head":
                            chunk = await asyncio.wait_for(reader.read(4096), timeout=self.p["byte_every"])
                        else:
                            chunk = await asyncio.wait_for(reader.read(4096), timeout=0.5)
                    except asyncio.TimeoutError:
                        if mode == "slow-head":
                            writer.write(head[sent:sent + 1])
                            sent += 1
                            await writer.drain()
                        continue
                    if not chunk:
                        closed = True
                        break
                    answer += chunk
            except (OSError, ssl.SSLError, ConnectionError):
                closed = True
            finally:
                if closed:
                    life = time.time() - opened
                    first = answer.split(b"\r\n", 1)[0].decode("latin-1")[:40] or "(nothing)"
                    with self.lock:
                        s["closed"][mode] += 1
                        s["lifetimes"][mode].append(round(life, 3))
                        s["answers"][first] = s["answers"].get(first, 0) + 1
                try:
                    writer.close()
                except Exception:
                    pass

    # ---- faults ----

    def verify(self, what, check, deadline):
        """Polls check() until it returns (True, detail) or the deadline passes."""
        end = time.time() + deadline
        detail = ""
        while True:
            try:
                ok, detail = check()
            except Exception as e:
                ok, detail = False, repr(e)
            if ok:
                return True, detail
            if time.time() > end:
                return False, detail
            time.sleep(0.1)

    def deadline(self):
        return self.p["poll"] * 3 + 5.0

    def reload_counts(self, name):
        m = prometheus(self.ports[name + "_admin"])
        return (metric(m, "meshgate_config_reloads_total", result="success"),
                metric(m, "meshgate_config_reloads_total", result="failure"))

    def certs_serial(self, name):
        _, text = http_get(f"http://127.0.0.1:{self.ports[name + '_admin']}/certs")
        chain = json.loads(text).get("cert_chain", {}).get("certificates", [])
        if not chain:
            raise RuntimeError(f"/certs has no chain: {text[:200]}")
        return norm_serial(chain[0]["serial"])

    def rotate(self):
        for name in ("gateway", "sidecar"):
            before_ok, before_fail = self.reload_counts(name)
            start = time.time()
            der, old = self.issue(name)
            serial = serial_of(der)
            digest = hashlib.sha256(der).hexdigest()

            def check():
                succ, fail = self.reload_counts(name)
                if fail > before_fail:
                    return False, f"reload failures {before_fail:g} -> {fail:g}"
                if succ <= before_ok:
                    return False, "no reload yet"
                got = self.certs_serial(name)
                if got != serial:
                    return False, f"/certs serial {got}, want {serial}"
                if name == "gateway":
                    _, _, _, served = probe_gateway(self.work, self.ports["gateway"], KINDS["probe-gateway"]["path"])
                    if hashlib.sha256(served).hexdigest() != digest:
                        return False, "a new handshake still gets the old leaf"
                else:
                    status, _, body = probe_sidecar(self.ports["sidecar"], KINDS["probe-sidecar"]["path"])
                    xfcc = json.loads(body).get("headers", {}).get("x-forwarded-client-cert", [""])
                    xfcc = xfcc[0] if isinstance(xfcc, list) else xfcc
                    if f"Hash={digest}" not in xfcc:
                        return False, f"the gateway still sees another sidecar leaf: {xfcc[:120]}"
                return True, f"serial {serial}"

            ok, detail = self.verify(f"rotate {name}", check, self.deadline())
            took = time.time() - start
            _, fail = self.reload_counts(name)
            if fail > before_fail:
                ok = False
                detail += f"; reload failures {before_fail:g} -> {fail:g}"
            self.record("rotate-" + name, ok, detail, seconds=round(took, 2))
            if old and os.path.isdir(old):
                shutil.rmtree(old, ignore_errors=True)

    def change_config(self):
        with self.lock:
            self.generation += 1
            g = self.generation
        before_ok, before_fail = self.reload_counts("gateway")
        start = time.time()
        self.write_vs()

        def check():
            succ, fail = self.reload_counts("gateway")
            if fail > before_fail:
                return False, f"reload failures {before_fail:g} -> {fail:g}"
            status, headers, _, _ = probe_gateway(self.work, self.ports["gateway"], KINDS["probe-gateway"]["path"])
            if status != 200:
                return False, f"probe {status}"
            got = headers.get("x-soak-generation")
            if got != str(g):
                # A later change may already have landed; that one is checked by its own event.
                if got is not None and got.isdigit() and int(got) > g:
                    return True, f"generation {got} (>= {g})"
                return False, f"x-soak-generation {got}, want {g}"
            status, _, body, _ = probe_gateway(self.work, self.ports["gateway"], "/soak-toggle")
            toggled = body.startswith(b"toggle ")
            if toggled != bool(g % 2):
                return False, f"/soak-toggle {status} {body[:40]!r} at generation {g}"
            if succ <= before_ok:
                return False, "no reload counted"
            return True, f"generation {g}"

        ok, detail = self.verify("config", check, self.deadline())
        self.record("config", ok, detail, seconds=round(time.time() - start, 2))

    def restart_backend(self):
        window = [time.time() - WINDOW_BEFORE, None]
        with self.lock:
            self.windows.append(window)
        proc = self.procs["backend"]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(self.p["backend_down"])
        self.start_backend()
        with self.lock:
            window[1] = time.time() + WINDOW_AFTER
        self.record("restart-backend", True, f"down {window[1] - WINDOW_AFTER - window[0] - WINDOW_BEFORE:.2f}s")

    # ---- sampling ----

    def sample(self):
        t = time.time() - self.t0
        row = {"t": round(t, 2)}
        for name in ("gateway", "sidecar"):
            pid = self.procs[name].pid
            try:
                row[name] = {"rss_kib": proc_rss_kib(pid), "fds": proc_fds(pid)}
                m = prometheus(self.ports[name + "_admin"])
                row[name]["reloads_ok"] = metric(m, "meshgate_config_reloads_total", result="success")
                row[name]["reloads_failed"] = metric(m, "meshgate_config_reloads_total", result="failure")
                row[name]["connections_active"] = metric(m, "meshgate_connections_active")
            except (OSError, ValueError) as e:
                row[name] = {"error": repr(e)}
        with self.lock:
            self.samples.append(row)
        self.read_logs()

    def progress(self):
        s = self.samples[-1]
        with self.lock:
            bad = sum(1 for e in self.events if not e["ok"])
            segs = self.segments["keepalive"][-1:] if self.segments["keepalive"] else []
        last = segs[0] if segs else {}
        log(f"t={s['t']:.0f}s gateway rss {s['gateway'].get('rss_kib')} KiB fds {s['gateway'].get('fds')}, "
            f"sidecar rss {s['sidecar'].get('rss_kib')} KiB fds {s['sidecar'].get('fds')}; "
            f"keep-alive p99 {last.get('p99_ms', 0) or 0:.2f} ms; failed lines {len(self.failed_lines)}; "
            f"slowloris closed {sum(self.slow['closed'].values())}; failed checks {bad}")

    def read_logs(self):
        """Reads what the access logs gained since last time: counts every line by kind, keeps
        the failed ones."""
        for name in ("gateway", "sidecar"):
            path = f"{self.work}/{name}/access.log"
            try:
                with open(path, "rb") as f:
                    f.seek(self.log_offsets.get(name, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            self.log_offsets[name] = self.log_offsets.get(name, 0) + len(data)
            data = self.log_partial.pop(name, b"") + data
            lines = data.split(b"\n")
            if lines[-1]:
                self.log_partial[name] = lines[-1]
            for line in lines[:-1]:
                if not line:
                    continue
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("event"):
                    kind = "event:" + e["event"]
                else:
                    kind = PATH_KIND.get(e.get("path"), "other")
                key = (name, kind)
                self.log_counts[key] = self.log_counts.get(key, 0) + 1
                status = e.get("status")
                if e.get("event"):
                    if kind != "event:handshake_rejected" or e.get("reason") != "eof":
                        self.failed_lines.append({"proxy": name, "kind": kind, **e})
                    continue
                if status is None:
                    self.log_aborted[key] = self.log_aborted.get(key, 0) + 1
                    continue
                if status != 200:
                    self.failed_lines.append({"proxy": name, "kind": kind, **e})

    # ---- teardown ----

    def teardown(self):
        self.stop.set()
        with self.lock:
            children = list(self.children)
        for p in children:
            try:
                p.kill()
            except OSError:
                pass
        for name in ("sidecar", "gateway", "backend"):
            proc = self.procs.get(name)
            if proc and proc.poll() is None:
                bench.stop(proc)

    # ---- report ----

    @staticmethod
    def classify_one(line, w0, w1):
        start = parse_time(line["start_time"])
        end = start + (line.get("duration_ms") or 0) / 1000.0
        return start <= (w1 if w1 is not None else float("inf")) and end >= w0

    def classify(self, line):
        """'on-purpose' if the request overlaps a backend restart window, else 'real'."""
        start = parse_time(line["start_time"])
        end = start + (line.get("duration_ms") or 0) / 1000.0
        for w0, w1 in self.windows:
            w1 = w1 if w1 is not None else float("inf")
            if start <= w1 and end >= w0:
                return "on-purpose"
        return "real"

    def report(self):
        a, p = self.args, self.p
        duration = a.minutes * 60.0
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        res = {"date": date, "minutes": a.minutes, "fast": a.fast, "periods": p,
               "machine": machine(), "binary": binary_info(a.binary),
               "load": {"keepalive_rate": a.rate, "keepalive_connections": a.connections,
                        "newconn_gateway_rate": a.newconn_rate,
                        "newconn_sidecar_rate": a.sidecar_newconn_rate, "slowloris": a.slowloris},
               "thresholds": {"rss_kib_per_min": a.max_rss_slope, "fds_per_min": a.max_fd_slope}}
        verdict = []

        # Requests.
        kinds = {}
        for kind, segs in self.segments.items():
            kinds[kind] = {
                "requests": sum(s.get("requests", 0) for s in segs),
                "not_200": sum(s.get("not_200", 0) for s in segs),
                "transport_errors": sum(s.get("transport_errors", 0) for s in segs),
                "transport_error_kinds": merge(s.get("errors", {}) for s in segs),
                "aborted_at_segment_end": sum(s.get("aborted", 0) for s in segs),
                "segments": len(segs),
                "unreadable_segments": sum(1 for s in segs if "oha_error" in s),
            }
        first_hop_failed = [ln for ln in self.failed_lines
                            if ln["kind"] in KINDS and ln["proxy"] == KINDS[ln["kind"]]["first_hop"]]
        for ln in self.failed_lines:
            ln["class"] = self.classify(ln) if "start_time" in ln else "real"
        real = [ln for ln in first_hop_failed if ln["class"] == "real"]
        on_purpose = [ln for ln in first_hop_failed if ln["class"] == "on-purpose"]
        transport = sum(k["transport_errors"] for k in kinds.values())
        unreadable = sum(k["unreadable_segments"] for k in kinds.values())
        for kind, k in kinds.items():
            k["failed_in_log"] = sum(1 for ln in first_hop_failed if ln["kind"] == kind)
            k["real_failures"] = sum(1 for ln in real if ln["kind"] == kind) + k["transport_errors"]
            k["failures_on_purpose"] = sum(1 for ln in on_purpose if ln["kind"] == kind)
            k["log_lines"] = self.log_counts.get((KINDS[kind]["first_hop"], kind), 0)
            k["log_lines_without_status"] = self.log_aborted.get((KINDS[kind]["first_hop"], kind), 0)
        # Other lines (events, unknown paths, second-hop lines) are shown, not counted twice.
        other_failed = [ln for ln in self.failed_lines if ln not in first_hop_failed]
        real_total = len(real) + transport
        res["requests"] = kinds
        res["requests_total"] = sum(k["requests"] for k in kinds.values())
        res["probes"] = {k: self.log_counts.get((KINDS[k]["first_hop"], k), 0) for k in KINDS if k.startswith("probe")}
        res["real_failures"] = real_total
        res["failures_on_purpose"] = len(on_purpose)
        res["windows"] = []
        for w0, w1 in self.windows:
            inside = [parse_time(ln["start_time"]) for ln in on_purpose
                      if self.classify_one(ln, w0, w1)]
            stop, up = w0 + WINDOW_BEFORE, (w1 or 0) - WINDOW_AFTER
            res["windows"].append({
                "stop_s": round(stop - self.t0, 2), "answering_again_s": round(up - self.t0, 2),
                "failures": len(inside),
                "first_failure_after_stop_s": round(min(inside) - stop, 3) if inside else None,
                "last_failure_after_answering_s": round(max(inside) - up, 3) if inside else None,
            })
        res["failed_lines_sample"] = [strip_line(ln) for ln in (real + on_purpose + other_failed)[:200]]
        res["other_failed_lines"] = len(other_failed)
        res["log_counts"] = {f"{p_}/{k}": v for (p_, k), v in sorted(self.log_counts.items())}
        if real_total:
            verdict.append(f"{real_total} real failures ({len(real)} in the logs, {transport} transport errors)")
        if unreadable:
            verdict.append(f"{unreadable} oha segments gave no JSON")
        for kind, k in kinds.items():
            if k["not_200"] != k["failed_in_log"]:
                res.setdefault("notes", []).append(
                    f"{kind}: oha counted {k['not_200']} non-200 answers, the {KINDS[kind]['first_hop']}'s "
                    f"access log {k['failed_in_log']}")

        # Per-minute table, from the keep-alive segments.
        minutes = []
        for s in self.segments["keepalive"]:
            row = {"minute": s["i"] + 1, "start": s["start"], "end": s["end"],
                   "requests": s.get("requests", 0), "rps": s.get("rps"),
                   "p50_ms": s.get("p50_ms"), "p99_ms": s.get("p99_ms"), "p999_ms": s.get("p999_ms"),
                   "slowest_ms": s.get("slowest_ms")}
            for other in ("newconn-gateway", "newconn-sidecar"):
                match = [o for o in self.segments[other] if o["i"] == s["i"]]
                row[other + "_p99_ms"] = match[0].get("p99_ms") if match else None
                row[other + "_requests"] = match[0].get("requests", 0) if match else 0
            lo, hi = s["start"] + self.t0, s["end"] + self.t0

            def within(ln):
                return lo <= parse_time(ln["start_time"]) < hi

            row["real"] = sum(1 for ln in real if within(ln))
            row["on_purpose"] = sum(1 for ln in on_purpose if within(ln))
            row["transport_errors"] = sum(o.get("transport_errors", 0) for k in self.segments
                                          for o in self.segments[k] if o["i"] == s["i"])
            row["events"] = sorted({e["kind"].split("-")[0] for e in self.events if s["start"] <= e["t"] < s["end"]})
            minutes.append(row)
        res["per_minute"] = minutes
        full = [m for m in minutes if m["end"] - m["start"] >= p["segment"] * 0.9 and m["p99_ms"] is not None]

        def spread(key, rows=None):
            vals = [m[key] for m in (full if rows is None else rows) if m.get(key) is not None]
            if not vals:
                return None
            return {"min": min(vals), "median": statistics.median(vals), "max": max(vals),
                    "max_over_min": max(vals) / min(vals) if min(vals) else None}

        res["spread"] = {k: spread(k) for k in ("p50_ms", "p99_ms", "p999_ms", "newconn-gateway_p99_ms",
                                                "newconn-sidecar_p99_ms")}
        quiet = [m for m in full if "restart" not in m["events"]]
        for key in ("p99_ms", "p999_ms"):
            res["spread"][key + "_without_restarts"] = spread(key, quiet)

        # Resources. A slope over a few minutes, or with every period scaled down, is mostly the
        # warm-up and the noise of the slowloris churn: judged on runs of 10 minutes or more only.
        judged = a.minutes >= 10 and not a.fast
        res["slopes_judged"] = judged
        resources = {}
        for name in ("gateway", "sidecar"):
            pts = [(s["t"], s[name]) for s in self.samples if "rss_kib" in s.get(name, {})]
            tail = [(t, v) for t, v in pts if t >= duration / 3.0]
            r = {}
            for key, unit in (("rss_kib", "KiB"), ("fds", "fds")):
                vals = [v[key] for _, v in pts]
                r[key] = {"start": vals[0], "end": vals[-1], "max": max(vals), "min": min(vals),
                          "slope_per_min_all": slope_per_minute([(t, v[key]) for t, v in pts]),
                          "slope_per_min_last_two_thirds": slope_per_minute([(t, v[key]) for t, v in tail])}
            resources[name] = r
            if not judged:
                continue
            if r["rss_kib"]["slope_per_min_last_two_thirds"] > a.max_rss_slope:
                verdict.append(f"{name} RSS slope {r['rss_kib']['slope_per_min_last_two_thirds']:.1f} KiB/min "
                               f"over the last two thirds > {a.max_rss_slope:g}")
            if r["fds"]["slope_per_min_last_two_thirds"] > a.max_fd_slope:
                verdict.append(f"{name} fd slope {r['fds']['slope_per_min_last_two_thirds']:.2f}/min "
                               f"over the last two thirds > {a.max_fd_slope:g}")
        res["resources"] = resources
        res["samples"] = self.samples

        # Reloads.
        ev = {}
        for e in self.events:
            d = ev.setdefault(e["kind"], {"done": 0, "verified": 0, "seconds": []})
            d["done"] += 1
            d["verified"] += 1 if e["ok"] else 0
            if "seconds" in e:
                d["seconds"].append(e["seconds"])
        for d in ev.values():
            secs = d.pop("seconds")
            if secs:
                d["seconds_median"] = statistics.median(secs)
                d["seconds_max"] = max(secs)
        res["events"] = ev
        res["failed_events"] = [e for e in self.events if not e["ok"]]
        counters = {}
        for name in ("gateway", "sidecar"):
            b, f = self.base_metrics[name], self.final_metrics[name]

            def delta(metric_name, **labels):
                return metric(f, metric_name, **labels) - metric(b, metric_name, **labels)

            counters[name] = {
                "reloads_success": delta("meshgate_config_reloads_total", result="success"),
                "reloads_failure": delta("meshgate_config_reloads_total", result="failure"),
                "access_log_dropped": delta("meshgate_access_log_dropped_total"),
                "handshakes": by_label(b, f, "meshgate_handshakes_total"),
                "upstream_connections": by_label(b, f, "meshgate_upstream_connections_total"),
                "connections_refused": delta("meshgate_connections_refused_total"),
                "connections_closed": by_label(b, f, "meshgate_connections_closed_total"),
                "upstream_retries": by_label(b, f, "meshgate_upstream_retries_total"),
            }
            if counters[name]["reloads_failure"]:
                verdict.append(f"{name}: {counters[name]['reloads_failure']:g} failed reloads")
            if counters[name]["access_log_dropped"]:
                verdict.append(f"{name}: {counters[name]['access_log_dropped']:g} access log lines dropped")
        res["counters"] = counters
        bad_events = [e for e in self.events if not e["ok"]]
        if bad_events:
            verdict.append(f"{len(bad_events)} reload/rotation checks or other events failed")

        # Slowloris.
        s = self.slow
        slow = {"connections": a.slowloris, "opened": s["opened"],
                "handshake_failures": s["handshake_failures"],
                "handshake_failure_reasons": s["handshake_failure_reasons"],
                "closed_by_proxy": dict(s["closed"]), "answers": s["answers"],
                "expected_lifetime_s": {"slow-head": p["header_timeout"], "silent": p["idle_timeout"]}}
        for mode, limit in (("slow-head", p["header_timeout"]), ("silent", p["idle_timeout"])):
            lives = s["lifetimes"][mode]
            if lives:
                slow[mode] = {"min": min(lives), "median": statistics.median(lives), "max": max(lives),
                              "early": sum(1 for x in lives if x < limit * 0.5),
                              "late": sum(1 for x in lives if x > limit * 1.5 + 2.0)}
            if not s["closed"][mode]:
                verdict.append(f"slowloris {mode}: no connection was closed by the gateway")
        if s["handshake_failures"]:
            verdict.append(f"slowloris: {s['handshake_failures']} handshakes failed")
        res["slowloris"] = slow
        res["verdict"] = verdict or ["pass"]

        os.makedirs(a.results, exist_ok=True)
        stem = f"results-{date}" + ("-fast" if a.fast else "")
        with open(os.path.join(a.results, stem + ".json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        md = markdown(res)
        with open(os.path.join(a.results, stem + ".md"), "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {os.path.join(a.results, stem)}.md and .json")
        return not verdict


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def merge(dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def by_label(before, after, name):
    """Increase of each series of a counter, labels joined, zeros left out."""
    out = {}
    for (n, labels), v in after.items():
        if n != name:
            continue
        d = v - before.get((n, labels), 0.0)
        if d:
            out[",".join(f"{k}={val}" for k, val in sorted(labels))] = d
    return out


def strip_line(ln):
    keep = ("proxy", "kind", "class", "start_time", "status", "response_flags", "duration_ms", "upstream",
            "event", "reason", "detail", "path")
    return {k: ln[k] for k in keep if k in ln}


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "model": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "oha": subprocess.run(["oha", "--version"], capture_output=True, text=True).stdout.strip()}


def binary_info(path):
    st = os.stat(path)
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": path, "bytes": st.st_size, "sha256": h.hexdigest(),
            "mtime": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(timespec="seconds"),
            "git_head": rev.stdout.strip()}


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown(r):
    L = []
    add = L.append
    add(f"# Soak run {r['date']}: {r['minutes']:g} minutes{' (--fast)' if r['fast'] else ''}\n")
    m = r["machine"]
    add(f"Machine: {m['cpus']} cores ({m['model']}), Linux {m['kernel']}, {m['oha']}. "
        f"meshgate: {r['binary']['path']} ({r['binary']['bytes']} bytes, sha256 {r['binary'].get('sha256', '?')[:16]}, "
        f"file time {r['binary']['mtime']}); repository HEAD when the run ended: {r['binary']['git_head']}.\n")
    ld = r["load"]
    add(f"Load: keep-alive {ld['keepalive_rate']}/s over {ld['keepalive_connections']} connections through "
        f"sidecar and gateway; new connections {ld['newconn_gateway_rate']}/s at the gateway (mTLS) and "
        f"{ld['newconn_sidecar_rate']}/s at the sidecar; {ld['slowloris']} slowloris connections at the "
        f"gateway.\n")
    p = r["periods"]
    add(f"Faults: leaves of both proxies rotated every {p['rotate']:g} s, gateway config changed every "
        f"{p['config']:g} s, backend restarted every {p['restart']:g} s (down {p['backend_down']:g} s). "
        f"Reload poll {p['poll']:g} s; gateway requestHeaderTimeout {p['header_timeout']:g} s, idleTimeout "
        f"{p['idle_timeout']:g} s.\n")
    add("## Verdict\n")
    for v in r["verdict"]:
        add(f"- {v}")
    add("")
    add("## Summary\n")
    add("| | |\n|---|---|")
    add(f"| requests (oha) | {r['requests_total']:,} |")
    for kind, k in r["requests"].items():
        add(f"| {kind} | {k['requests']:,} in {k['segments']} segments; real failures {k['real_failures']}, "
            f"on purpose {k['failures_on_purpose']}, transport errors {k['transport_errors']} |")
    add(f"| probes (reload checks) | {sum(r['probes'].values()):,} |")
    add(f"| **real failures** | **{r['real_failures']}** |")
    add(f"| failures on purpose (backend restart windows) | {r['failures_on_purpose']} |")
    ev = r["events"]
    for key, label in (("rotate-gateway", "gateway leaf rotations"), ("rotate-sidecar", "sidecar leaf rotations"),
                       ("config", "gateway config changes"), ("restart-backend", "backend restarts")):
        d = ev.get(key, {"done": 0, "verified": 0})
        extra = f" (seen after median {d['seconds_median']:.2f} s, max {d['seconds_max']:.2f} s)" if "seconds_median" in d else ""
        add(f"| {label}: done / verified | {d['done']} / {d['verified']}{extra} |")
    for name in ("gateway", "sidecar"):
        c = r["counters"][name]
        add(f"| {name} reloads counted: success / failure | {c['reloads_success']:g} / {c['reloads_failure']:g} |")
    sl = r["slowloris"]
    add(f"| slowloris connections closed by the gateway | slow head {sl['closed_by_proxy']['slow-head']:,}, "
        f"silent {sl['closed_by_proxy']['silent']:,} (handshake failures {sl['handshake_failures']}) |")
    add("")
    add("## Memory and file descriptors (sampled every "
        f"{p['sample']:g} s; slope: least squares over the last two thirds, and over the whole run)\n")
    add("| proxy | RSS start | RSS end | RSS max | RSS slope (KiB/min) | fds start | fds end | fds max | fd slope (/min) |")
    add("|---|---|---|---|---|---|---|---|---|")
    for name, res in r["resources"].items():
        rs, fd = res["rss_kib"], res["fds"]
        add(f"| {name} | {rs['start'] / 1024:.1f} MiB | {rs['end'] / 1024:.1f} MiB | {rs['max'] / 1024:.1f} MiB | "
            f"{rs['slope_per_min_last_two_thirds']:.1f} (all: {rs['slope_per_min_all']:.1f}) | {fd['start']} | "
            f"{fd['end']} | {fd['max']} | {fd['slope_per_min_last_two_thirds']:.2f} (all: {fd['slope_per_min_all']:.2f}) |")
    th = r["thresholds"]
    judged = "" if r["slopes_judged"] else " (not judged: runs of 10 minutes or more without --fast only)"
    add(f"\nThresholds: RSS slope {th['rss_kib_per_min']:g} KiB/min, fd slope {th['fds_per_min']:g}/min{judged}.\n")
    add(f"## Latency per {'minute' if r['periods']['segment'] == 60 else 'segment'} (oha; keep-alive through both hops, new connections at gateway and sidecar)\n")
    unit = "minute" if r["periods"]["segment"] == 60 else f"segment ({r['periods']['segment']:g} s)"
    add(f"| {unit} | keep-alive req | p50 ms | p99 ms | p99.9 ms | max ms | new-conn gateway p99 ms | new-conn sidecar p99 ms | real failures | on purpose | transport errors | events |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in r["per_minute"]:
        add(f"| {row['minute']} | {row['requests']:,} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | "
            f"{fmt(row['p999_ms'])} | {fmt(row['slowest_ms'], '.1f')} | {fmt(row['newconn-gateway_p99_ms'])} | "
            f"{fmt(row['newconn-sidecar_p99_ms'])} | {row['real']} | {row['on_purpose']} | "
            f"{row['transport_errors']} | {', '.join(row['events'])} |")
    add(f"\nSpread over the full {'minutes' if r['periods']['segment'] == 60 else 'segments'}:\n")
    add("| | min | median | max | max/min |\n|---|---|---|---|---|")
    for key, label in (("p50_ms", "keep-alive p50 ms"), ("p99_ms", "keep-alive p99 ms"),
                       ("p999_ms", "keep-alive p99.9 ms"), ("newconn-gateway_p99_ms", "new-conn gateway p99 ms"),
                       ("newconn-sidecar_p99_ms", "new-conn sidecar p99 ms"),
                       ("p99_ms_without_restarts", "keep-alive p99 ms, minutes without a backend restart"),
                       ("p999_ms_without_restarts", "keep-alive p99.9 ms, minutes without a backend restart")):
        s = r["spread"].get(key)
        if s:
            add(f"| {label} | {s['min']:.2f} | {s['median']:.2f} | {s['max']:.2f} | {fmt(s['max_over_min'])} |")
    add("")
    add("## Slowloris\n")
    add("Lifetime: from the first byte of the head (slow head), from the end of the handshake (silent).\n")
    add("| mode | closed by the gateway | lifetime min / median / max (s) | expected | closed before half of it | later than 1.5x + 2 s |")
    add("|---|---|---|---|---|---|")
    for mode in ("slow-head", "silent"):
        d = sl.get(mode)
        if d:
            add(f"| {mode} | {sl['closed_by_proxy'][mode]:,} | {d['min']:.2f} / {d['median']:.2f} / {d['max']:.2f} | "
                f"{sl['expected_lifetime_s'][mode]:g} | {d['early']} | {d['late']} |")
    add(f"\nWhat the gateway answered before closing: {json.dumps(sl['answers'])}\n")
    add("## Counters (increase over the run)\n")
    for name, c in r["counters"].items():
        add(f"- {name}: handshakes {json.dumps(c['handshakes'])}; upstream connections "
            f"{json.dumps(c['upstream_connections'])}; retries {json.dumps(c['upstream_retries'])}; "
            f"refused connections {c['connections_refused']:g}; closed by a limit "
            f"{json.dumps(c.get('connections_closed', {}))}; access log lines dropped {c['access_log_dropped']:g}")
    add("")
    if r.get("notes"):
        add("## Notes\n")
        for n in r["notes"]:
            add(f"- {n}")
        add("")
    if r["failed_events"]:
        add("## Failed checks\n")
        for e in r["failed_events"][:50]:
            add(f"- t={e['t']}s {e['kind']}: {e['detail']}")
        add("")
    if r["failed_lines_sample"]:
        add("## Failed requests (first 200 lines: first hop, then other lines)\n")
        add("| proxy | kind | class | start | status | flags | ms | detail |\n|---|---|---|---|---|---|---|---|")
        for ln in r["failed_lines_sample"][:200]:
            add(f"| {ln.get('proxy')} | {ln.get('kind')} | {ln.get('class')} | {ln.get('start_time', '')} | "
                f"{ln.get('status', '')} | {ln.get('response_flags', '')} | {ln.get('duration_ms', '')} | "
                f"{ln.get('reason', '')} {str(ln.get('detail', ''))[:80]} |")
        add("")
    if r["windows"]:
        add("## Backend restarts\n")
        add("| stopped at (s) | answering again at (s) | failed requests | first failure after the stop (s) | "
            "last failure after the backend answered again (s) |")
        add("|---|---|---|---|---|")
        for w in r["windows"]:
            add(f"| {w['stop_s']} | {w['answering_again_s']} | {w['failures']} | "
                f"{fmt(w['first_failure_after_stop_s'], '.3f')} | {fmt(w['last_failure_after_answering_s'], '.3f')} |")
        add("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
