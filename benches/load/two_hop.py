#!/usr/bin/env python3
"""Where two hops' CPU goes (goal 5): each proxy's CPU per request, context switches and page
faults, counted by the kernel (`perf stat`), for one hop and for two.

One hop is bench.py's keep-alive load (oha -> mTLS -> gateway -> backend); two hops put the
outbound listener in front of it (oha -> plaintext -> source proxy -> ISTIO_MUTUAL -> gateway
-> backend). As in bench.py, every proxy is pinned to core 0 and oha and the backend to core 1,
so in two hops the two proxies share a core: a row gives the gateway's own figures in both
loads, which shows what sharing the core costs it. A last run moves the gateway to core 1 (beside
oha and the backend) and counts the source proxy with core 0 to itself: its own work, without
the gateway's turns.

    python3 benches/load/two_hop.py [--rounds 3] [--duration 5] [--connections 64]
        [--h2-upgrade] [--binary target/release/meshgate]

`--h2-upgrade` has the source proxy's DestinationRule upgrade the hop between the proxies to
HTTP/2 (`connectionPool.http.h2UpgradePolicy: UPGRADE`): the gateway then serves HTTP/2 over
the pooled mTLS connections, several requests to a TLS record.

Needs perf (run as root), oha, nginx (the backend) and taskset.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

EVENTS = ("task-clock", "context-switches", "page-faults")


def per_request(groups, work, drive):
    """`perf stat` on each group of pids over one `drive()` (an oha run): for each group, CPU
    microseconds, context switches and page faults per answered request."""
    perfs = []
    for i, pids in enumerate(groups):
        out = f"{work}/perf-{i}.txt"
        cmd = ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", ",".join(map(str, pids)), "-o", out]
        perfs.append((subprocess.Popen(cmd, stderr=subprocess.DEVNULL), out))
    time.sleep(0.5)
    res = drive()
    for perf, _ in perfs:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
    ok = res["statusCodeDistribution"].get("200", 0)
    if not ok or bench.failures(res):
        sys.exit(f"{ok} answered, {bench.failures(res)} failed")
    rows = []
    for _, out in perfs:
        counts = {}
        with open(out) as f:
            for line in f:
                fields = line.strip().split(",")
                if len(fields) > 2 and fields[0].replace(".", "", 1).isdigit():
                    counts[fields[2]] = float(fields[0])
        rows.append({
            # task-clock is in milliseconds.
            "cpu_us": counts.get("task-clock", 0) * 1000 / ok,
            "switches": counts.get("context-switches", 0) / ok,
            "faults": counts.get("page-faults", 0) / ok,
        })
    return rows


def one_round(args, work, tls):
    gateway, port = bench.start_proxy("meshgate", args, work, tls)
    source = None
    try:
        client = f"{tls.keys}/client"
        bench.oha(port, 1, args.connections, client)  # warm-up
        [alone] = per_request(
            [bench.family(gateway.pid)], work,
            lambda: bench.oha(port, args.duration, args.connections, client),
        )
        cmd = [
            "taskset", "-c", "0", args.binary, "run", "--concurrency", "1",
            "-c", bench.source_config(work, tls, args.h2_upgrade),
        ]
        env = dict(os.environ, MESHGATE_LOG="warn")
        source = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        bench.wait_port(bench.OUTBOUND_PORT)
        bench.oha(bench.OUTBOUND_PORT, 2, args.connections)  # warm-up, and the pooled connections
        behind, front = per_request(
            [bench.family(gateway.pid), bench.family(source.pid)], work,
            lambda: bench.oha(bench.OUTBOUND_PORT, args.duration, args.connections),
        )
        # The source proxy with core 0 to itself: the gateway joins oha and the backend on
        # core 1, so that the source proxy's own work is counted without the gateway's turns.
        for pid in bench.family(gateway.pid):
            subprocess.run(["taskset", "-a", "-pc", "1", str(pid)], check=True, stdout=subprocess.DEVNULL)
        bench.oha(bench.OUTBOUND_PORT, 1, args.connections)
        [own] = per_request(
            [bench.family(source.pid)], work,
            lambda: bench.oha(bench.OUTBOUND_PORT, args.duration, args.connections),
        )
        return {
            "one hop: gateway": alone,
            "two hops: gateway": behind,
            "two hops: source proxy": front,
            "two hops, gateway moved to core 1: source proxy": own,
        }
    finally:
        if source:
            bench.stop(source)
        bench.stop(gateway)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--h2-upgrade", action="store_true", help="the source proxy speaks HTTP/2 to the gateway (h2UpgradePolicy: UPGRADE)")
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/meshgate"))
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    args.baseline = None  # what bench.start_proxy reads besides --binary
    for tool in ("perf", "oha", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    work = tempfile.mkdtemp(prefix="meshgate-two-hop-")
    rounds = []
    try:
        bench.pki(args.binary, work, ["ecdsa"])
        tls = bench.Tls(f"{work}/ecdsa", False)
        backend = bench.start_backend(work)
        try:
            for i in range(args.rounds):
                rounds.append(one_round(args, work, tls))
                r = rounds[-1]
                total = r["two hops: gateway"]["cpu_us"] + r["two hops: source proxy"]["cpu_us"]
                print(f"round {i + 1}: one hop {r['one hop: gateway']['cpu_us']:.2f} µs, two hops {total:.2f} µs", file=sys.stderr)
        finally:
            bench.stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rounds, args)


def report(rounds, args):
    between = "HTTP/2 (h2UpgradePolicy: UPGRADE)" if args.h2_upgrade else "HTTP/1.1"
    print(f"\nkeep-alive, {args.connections} connections, {between} between the proxies, {args.rounds} rounds of {args.duration} s, median [range]\n")
    print("| proxy | CPU per request (µs) | context switches per request | page faults per request |")
    print("|---|---|---|---|")
    for name in rounds[0]:
        cells = []
        for key, fmt in (("cpu_us", "{:.2f}"), ("switches", "{:.3f}"), ("faults", "{:.3f}")):
            vals = [r[name][key] for r in rounds]
            cells.append(f"{fmt.format(statistics.median(vals))} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    ratios = [
        (r["two hops: gateway"]["cpu_us"] + r["two hops: source proxy"]["cpu_us"]) / r["one hop: gateway"]["cpu_us"]
        for r in rounds
    ]
    shared = [r["two hops: gateway"]["cpu_us"] / r["one hop: gateway"]["cpu_us"] for r in rounds]
    print(f"\ntwo hops / one hop, per round: {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
    print(f"the gateway's CPU per request behind the source proxy / alone: {statistics.median(shared):.2f} [{min(shared):.2f}-{max(shared):.2f}]")
    own = [
        (r["two hops, gateway moved to core 1: source proxy"]["cpu_us"] + r["one hop: gateway"]["cpu_us"]) / r["one hop: gateway"]["cpu_us"]
        for r in rounds
    ]
    print(f"each proxy with core 0 to itself (the source proxy alone plus the gateway alone) / one hop: {statistics.median(own):.2f} [{min(own):.2f}-{max(own):.2f}]")


if __name__ == "__main__":
    main()
