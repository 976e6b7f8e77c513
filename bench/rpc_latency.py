"""Latency of the control plane: daemon.ping through the client library, and `banger vm list --json`.

Usage: python bench/rpc_latency.py [--pings 2000] [--lists 30]
Starts a private bangerd in a throwaway BANGER_HOME, measures, prints median and p95, and stops it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from banger.testing.daemon import Home


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(label: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(f"{label:<38} n={len(ms):<5} median={statistics.median(ms):8.3f} ms  p95={pct(ms, 0.95):8.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--lists", type=int, default=30)
    args = parser.parse_args()
    home = Home()
    try:
        home.start_daemon()
        with home.client() as client:
            for _ in range(50):  # warm up
                client.ping()
            pings = []
            for _ in range(args.pings):
                t0 = time.perf_counter()
                client.ping()
                pings.append(time.perf_counter() - t0)
        connects = []
        for _ in range(200):
            t0 = time.perf_counter()
            with home.client() as client:
                client.ping()
            connects.append(time.perf_counter() - t0)
        lists = []
        for _ in range(args.lists):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "banger.cli", "vm", "list", "--json"], env=home.env,
                           check=True, capture_output=True)
            lists.append(time.perf_counter() - t0)
        report("daemon.ping (client, one connection)", pings)
        report("connect + daemon.ping (client)", connects)
        report("banger vm list --json (whole process)", lists)
    finally:
        home.cleanup()


if __name__ == "__main__":
    main()
