"""Latency of the control plane: daemon.ping through the client library, and `banger vm list --json` as a
whole process beside bare `python -c pass` (the start-up floor), run alternately so noise hits both.

Usage: python bench/rpc_latency.py [--pings 2000] [--lists 30] [--vms 20]
Starts a private bangerd in a throwaway BANGER_HOME holding --vms stopped VMs, measures, prints median and
p95 and the ratio of the medians, and stops it. Target (issue 14): `vm list --json` median <= 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from banger.testing.artifacts import seed_stopped_vms
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
    parser.add_argument("--vms", type=int, default=20)
    args = parser.parse_args()
    home = Home()
    try:
        seed_stopped_vms(home.layout, {f"{i:012x}": f"vm-{i}" for i in range(1, args.vms + 1)})
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
        banger = str(Path(sys.executable).parent / "banger")  # the installed entry point, as users run it
        lists, bare = [], []
        for _ in range(args.lists):
            bare.append(_timed([sys.executable, "-c", "pass"], home.env))
            lists.append(_timed([banger, "vm", "list", "--json"], home.env))
        report("daemon.ping (client, one connection)", pings)
        report("connect + daemon.ping (client)", connects)
        report("python -c pass (whole process)", bare)
        report(f"banger vm list --json, {args.vms} VMs (whole process)", lists)
        print(f"vm list --json / python -c pass: {statistics.median(lists) / statistics.median(bare):.1f}x")
    finally:
        home.cleanup()


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
