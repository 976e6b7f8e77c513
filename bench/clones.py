"""Cold boot vs snapshot clone, side by side in one run, under QEMU TCG; and the host RSS of idle clones.

Run as root: python bench/clones.py [--runs 5] [--idle 20]. Makes its own network namespace and
BANGER_HOME, installs the cached kernel and golden image (run the test suite once first), builds the
template once (reported, not counted), then alternates `vm run --rm -- true` cold (--cold) and cloned so
both see the same machine load, and reports medians and their ratio. `--idle N` then starts N clones,
waits, and sums their QEMU processes' RSS (and PSS, which counts shared template pages once), beside how
far the host's MemAvailable fell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from banger.testing.artifacts import VM_CONFIG, install_image, install_kernel, newest_cached
from banger.testing.daemon import Home
from banger.testing.netns import NetNS


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=int, default=20, help="idle clones to measure RSS over (0: skip)")
    args = parser.parse_args()
    with NetNS() as ns:
        home = Home(netns=ns.name)
        home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
        home.layout.config_file.write_text(VM_CONFIG.replace("snapshots = false", "snapshots = true"))
        install_kernel(home.layout, newest_cached("kernels/*/debian-6.1"))
        install_image(home.layout, newest_cached("golden-image/*"))
        try:
            home.cli("daemon", "status", check=True)
            t0 = time.perf_counter()
            home.cli("vm", "templates", "build", check=True, timeout=600)
            print(f"template build (cold boot + settle + snapshot): {time.perf_counter() - t0:.1f}s")
            cold, clone = [], []
            for i in range(args.runs):
                for label, extra, out in (("cold", ["--cold"], cold), ("clone", [], clone)):
                    t = time.perf_counter()
                    home.cli("vm", "run", "--rm", "--name", f"{label}{i}", *extra, "--", "true", check=True,
                             timeout=600)
                    out.append(time.perf_counter() - t)
            cm, km = statistics.median(cold), statistics.median(clone)
            print(f"vm run --rm -- true under QEMU TCG, n={args.runs} each, alternating")
            print(f"  cold   median {cm:6.2f}s  min {min(cold):6.2f}s  max {max(cold):6.2f}s")
            print(f"  clone  median {km:6.2f}s  min {min(clone):6.2f}s  max {max(clone):6.2f}s")
            print(f"  clone / cold = {km / cm:.3f}")
            if args.idle:
                available_before = _meminfo_kib("MemAvailable")
                t = time.perf_counter()
                for i in range(args.idle):
                    home.cli("vm", "create", "--name", f"idle{i}", check=True, timeout=600)
                print(f"{args.idle} clones created one after another in {time.perf_counter() - t:.1f}s")
                time.sleep(10)
                pids = []
                for vm_dir in home.layout.vms_dir.iterdir():
                    handles = json.loads((vm_dir / "handles.json").read_text())
                    pids.append(handles["vmm"]["pid"])
                rss = sum(_status_kib(p, "VmRSS") for p in pids)
                pss = sum(_pss_kib(p) for p in pids)
                taken = available_before - _meminfo_kib("MemAvailable")
                print(f"  {len(pids)} idle clones: RSS sum {rss / 1024 / 1024:.2f} GiB, "
                      f"PSS sum {pss / 1024 / 1024:.2f} GiB (shared template pages counted once), "
                      f"host MemAvailable down {taken / 1024 / 1024:.2f} GiB")
                home.cli("vm", "kill", *[f"idle{i}" for i in range(args.idle)], timeout=600)
        finally:
            home.cleanup()


if __name__ == "__main__":
    main()
