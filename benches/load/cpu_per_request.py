#!/usr/bin/env python3
"""CPU time per request of each proxy, counted by the kernel (`perf stat -e task-clock`) over
one oha run, with the system calls each request took: the figure of goal 2 (and of the
handshake loads), read to the microsecond instead of from /proc's 10 ms ticks.

Same setup as bench.py (one worker pinned to core 0, oha and the nginx backend on core 1,
TLS 1.3 with a client certificate, the peers configured as there). Each round runs every
proxy once, in turn; the table gives the median [range] over the rounds and the median of
each round's own ratio of meshgate against the better peer, and against each peer when there
are two.

    python3 benches/load/cpu_per_request.py [--load keepalive|steady|h2|handshake|resumed]
        [--key-type ecdsa|rsa] [--rounds 3] [--duration 5] [--proxies meshgate,haproxy,nginx]
        [--baseline OLD_BINARY --proxies meshgate,baseline]

Needs perf (tracepoints readable: run as root), oha, nginx, haproxy and taskset.
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

SYSCALLS = ("recvfrom", "read", "sendto", "write", "writev", "epoll_wait")
# Every system call of the proxy, the named ones and all others (futex, epoll_ctl, ...).
ALL = "raw_syscalls:sys_enter"


def run(name, args, work, tls):
    """One start of `name`: warmed up, then one oha run under `perf stat`."""
    proc, port = bench.start_proxy(name, args, work, tls)
    try:
        pids = bench.family(proc.pid)
        client = f"{tls.keys}/client"
        conns, flags = bench.load(args.load, args)
        bench.oha(port, 1, conns, client, flags)  # warm-up
        out = f"{work}/perf-stat.txt"
        events = ",".join(["task-clock", ALL, *(f"syscalls:sys_enter_{s}" for s in SYSCALLS)])
        perf = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids)), "-o", out],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        user0, system0 = bench.user_system(pids)
        res = bench.oha(port, args.duration, conns, client, flags)
        user1, system1 = bench.user_system(pids)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
        ok = res["statusCodeDistribution"].get("200", 0)
        if not ok or bench.failures(res):
            sys.exit(f"{name}: {ok} answered, {bench.failures(res)}")
        counts = {}
        with open(out) as f:
            for line in f:
                fields = line.strip().split(",")
                if len(fields) > 2 and fields[0].replace(".", "", 1).isdigit():
                    counts[fields[2].removeprefix("syscalls:sys_enter_")] = float(fields[0])
        # task-clock is in milliseconds.
        row = {"cpu_us": counts.get("task-clock", 0) * 1000 / ok}
        # The kernel's share of the same run (system time over user + system).
        row["kernel"] = (system1 - system0) / max(user1 - user0 + system1 - system0, 1e-9)
        row.update({s: counts.get(s, 0) / ok for s in SYSCALLS})
        row["all"] = counts.get(ALL, 0) / ok
        return row
    finally:
        bench.stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", choices=("keepalive", "steady", "h2", "handshake", "resumed"), default="keepalive")
    ap.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--proxies", default="meshgate,haproxy,nginx", help="of meshgate, baseline, haproxy, nginx")
    ap.add_argument("--baseline", help="another meshgate binary, run as `baseline`")
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/meshgate"))
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections (streams for h2)")
    ap.add_argument("--h2-connections", type=int, default=8)
    ap.add_argument("--handshake-connections", type=int, default=16)
    ap.add_argument("--rate", type=int, default=5000)
    args = ap.parse_args()
    for tool in ("perf", "oha", "nginx", "haproxy", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: see benches/README.md")
    proxies = args.proxies.split(",")
    work = tempfile.mkdtemp(prefix="meshgate-cpu-")
    try:
        bench.pki(args.binary, work, [args.key_type])
        tls = bench.Tls(f"{work}/{args.key_type}", args.load == "resumed")
        backend = bench.start_backend(work)
        rounds = []
        try:
            for i in range(args.rounds):
                rounds.append({name: run(name, args, work, tls) for name in proxies})
                print(f"round {i + 1}: " + ", ".join(f"{n} {r['cpu_us']:.2f} µs" for n, r in rounds[-1].items()), file=sys.stderr)
        finally:
            bench.stop(backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rounds, proxies, args)


def report(rounds, proxies, args):
    print(f"\n{args.load} ({args.key_type}), {args.rounds} rounds of {args.duration} s\n")
    print("| proxy | CPU per request (µs) | of which kernel | " + " | ".join(f"{s} per request" for s in SYSCALLS) + " | all calls per request |")
    print("|---|---|---|" + "---|" * (len(SYSCALLS) + 1))
    for name in proxies:
        cpu = [r[name]["cpu_us"] for r in rounds]
        calls = " | ".join(f"{statistics.median(r[name][s] for r in rounds):.2f}" for s in SYSCALLS)
        kernel = statistics.median(r[name]["kernel"] for r in rounds)
        every = statistics.median(r[name]["all"] for r in rounds)
        print(f"| {name} | {statistics.median(cpu):.2f} [{min(cpu):.2f}-{max(cpu):.2f}] | {kernel:.0%} | {calls} | {every:.2f} |")
    peers = [p for p in proxies if p != "meshgate"]
    # A baseline build is compared with, not counted as a peer.
    if "baseline" in peers:
        peers = ["baseline"]
    if "meshgate" in proxies and peers:
        ratios = [r["meshgate"]["cpu_us"] / min(r[p]["cpu_us"] for p in peers) for r in rounds]
        median = statistics.median(ratios)
        print(
            f"\nmeshgate / {'baseline' if peers == ['baseline'] else 'better peer'}, per round: {median:.2f} [{min(ratios):.2f}-{max(ratios):.2f}]:"
            f" {1 / median:.2f}x its requests per CPU-second"
        )
        # Goal 2 names HAProxy: each peer's own ratio, when there are two.
        for peer in peers if len(peers) > 1 else []:
            speed = sorted(r[peer]["cpu_us"] / r["meshgate"]["cpu_us"] for r in rounds)
            print(
                f"meshgate against {peer}, per round: {statistics.median(speed):.2f}x"
                f" [{speed[0]:.2f}-{speed[-1]:.2f}] its requests per CPU-second"
            )


if __name__ == "__main__":
    main()
