#!/usr/bin/env python3
"""Where a proxy's CPU goes under load: `perf record -e cpu-clock` on the proxy while oha drives
one of the bench's loads (keep-alive HTTP/1.1 or HTTP/2, full or resumed handshakes) with the
bench's setup (one worker pinned to core 0, load generator and backend on core 1, TLS 1.3 with
a client certificate), then each sample's symbol put in one of:

  kernel    system calls, TCP/IP on loopback, the scheduler ([k] symbols)
  TLS       rustls, aws-lc (AES-GCM, SHA, P-256, X25519), webpki, tokio-rustls
  HTTP      hyper, httparse, http, h2: parsing and writing
  runtime   tokio and mio: tasks, wake-ups, epoll
  alloc     mimalloc
  libc      memcpy, memmove and the rest of libc
  meshgate  meshgate's own code: identity, tags, routing, authorization, forwarding
  other     everything else (std, core, unresolved)

Prints the split in percent of the proxy's samples, then the hottest symbols with their class.
Works for nginx and HAProxy too (their own code lands in "other"). Needs perf and what bench.py
needs.

Usage: python3 benches/load/profile.py [--load keepalive|h2|handshake|resumed]
                                       [--key-type ecdsa|rsa] [--proxy meshgate]
                                       [--duration 10] [--top 25]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

CLASSES = (
    ("TLS", re.compile(r"rustls|aws_lc|aws-lc|webpki|curve25519|^_*(aes|gcm|sha\d|ecp_nistz|fiat_|x25519|bn_|ec_|EVP_|CRYPTO_|ecdsa|p256|beeu|rsaz|RSA_|ChaCha|poly1305|OPENSSL_|x509|asn1|ASN1_)", re.I)),
    ("HTTP", re.compile(r"hyper|httparse|\bhttp::|^http::|\bh2::|^h2::|http_body|hyper_util")),
    ("runtime", re.compile(r"tokio|mio::|^mio|epoll")),
    ("alloc", re.compile(r"^_?mi_|mimalloc|^mi_|__rust_alloc|__rust_dealloc|__rust_realloc")),
    ("meshgate", re.compile(r"meshgate")),
)

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*)$")


def classify(dso, kind, sym):
    if kind == "k":
        return "kernel"
    for name, pattern in CLASSES:
        if pattern.search(sym):
            return name
    if dso.startswith("libc") or dso.startswith("libm"):
        return "libc"
    return "other"


def split(report):
    """(class -> percent, [(percent, class, symbol)]) from `perf report --sort dso,sym`."""
    totals, rows = {}, []
    for line in report.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m[1]), m[2], m[3], m[4].strip()
        cls = classify(dso, kind, sym)
        totals[cls] = totals.get(cls, 0.0) + pct
        rows.append((pct, cls, sym))
    return totals, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", choices=("keepalive", "h2", "handshake", "resumed"), default="keepalive")
    ap.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    ap.add_argument("--proxy", choices=("meshgate", *bench.PEERS), default="meshgate")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections (streams for h2)")
    ap.add_argument("--h2-connections", type=int, default=8)
    ap.add_argument("--handshake-connections", type=int, default=16)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/meshgate"))
    args = ap.parse_args()
    args.baseline = None
    if not shutil.which("perf"):
        sys.exit("perf not found")
    conns, flags = bench.load(args.load, args)
    work = tempfile.mkdtemp(prefix="meshgate-profile-")
    try:
        bench.pki(args.binary, work, [args.key_type])
        tls = bench.Tls(f"{work}/{args.key_type}", args.load == "resumed")
        client = f"{tls.keys}/client"
        backend = bench.start_backend(work)
        proc, port = bench.start_proxy(args.proxy, args, work, tls)
        try:
            bench.oha(port, 2, args.connections, client)  # warm-up
            data = f"{work}/perf.data"
            pids = ",".join(str(p) for p in bench.family(proc.pid))
            load = threading.Thread(target=bench.oha, args=(port, args.duration + 2, conns, client, flags))
            load.start()
            subprocess.run(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-p", pids, "-o", data,
                 "--", "sleep", str(args.duration)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            load.join()
            report = subprocess.run(
                ["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio",
                 "--percent-limit", "0.01"],
                check=True, capture_output=True, text=True,
            ).stdout
        finally:
            bench.stop(proc)
            bench.stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    totals, rows = split(report)
    print(f"\n{args.proxy}, {args.load} load ({args.key_type}) with {conns} connections, {args.duration}s of cpu-clock samples\n")
    print("| class | share of the proxy's CPU |")
    print("|---|---|")
    for cls in ("kernel", "TLS", "HTTP", "runtime", "alloc", "libc", "meshgate", "other"):
        print(f"| {cls} | {totals.get(cls, 0.0):.1f}% |")
    print(f"\nhottest {args.top} symbols:")
    for pct, cls, sym in sorted(rows, reverse=True)[: args.top]:
        print(f"{pct:6.2f}%  {cls:9} {sym[:110]}")


if __name__ == "__main__":
    main()
