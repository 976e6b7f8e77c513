"""Nested KVM, side by side in one run: plain Firecracker vs banger's Firecracker vs banger's QEMU+KVM,
inside a KVM host VM (banger.testing.nested: QEMU TCG with nested SVM, banger installed from wheels).

Usage: python bench/nested.py [--runs 3]     (root; uses the test cache's kernel, images and Firecracker)

Per run, interleaved so the machine's noise hits all alike:
- plain Firecracker: `firecracker --no-api` over a fresh VM's disks, exec to the first `ssh true`;
- `vm run --rm -- true`: Firecracker (cold: banger has no Firecracker snapshots yet), QEMU+KVM cold
  (`--cold`) and QEMU+KVM cloned from its snapshot template (built once before the runs, not counted);
- boot to SSH (`vm create`, cold for both VMMs) and `vm workspace prepare` of a small repo, per VMM.
Prints medians and banger-Firecracker / plain-Firecracker, and any clone that fell back to a cold boot.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from banger.testing.firecracker import firecracker_binary, jailer_binary  # noqa: E402
from banger.testing.nested import (  # noqa: E402
    KvmHost,
    build_kvm_host_rootfs,
    build_nested_image,
    build_wheels,
    plain_firecracker_seconds,
    timed_inside,
)
from banger.testing.netns import NetNS  # noqa: E402
from conftest import DEBIAN_MIRROR, build_default_kernel, build_golden_image, cache_root  # noqa: E402

REPO = ("rm -rf /root/src && mkdir -p /root/src/pkg && cd /root/src && git init -q -b main && "
        "for i in $(seq 1 200); do echo \"line $i\" > pkg/f$i.txt; done && git add -A && "
        "git -c user.name=B -c user.email=b@example.test commit -q -m bench")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cache = cache_root()
    kernel, golden = build_default_kernel(), build_golden_image()
    jailer_binary(cache)  # beside Firecracker in the cache: the inner banger jails it (jailer = auto)
    image = build_nested_image(cache, build_kvm_host_rootfs(cache, DEBIAN_MIRROR), kernel, golden,
                               firecracker_binary(cache))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, NetNS() as ns:
        wheels = build_wheels(ROOT, Path(tmp) / "wheels")
        host = KvmHost.in_netns(ns.name, kernel, image)
        home = host.home
        try:
            t = time.monotonic()
            host.boot()
            boot_host = time.monotonic() - t
            t = time.monotonic()
            host.setup(wheels)
            setup_host = time.monotonic() - t
            host.sh(REPO)
            rc, warm, _ = timed_inside(host, "vm", "run", "--rm", "--", "true")  # the probe, the bridge
            assert rc == 0, "warm-up run failed"
            rc, template, _ = timed_inside(host, "vm", "templates", "build", "--runtime", "qemu")
            assert rc == 0, "the QEMU+KVM template build failed"
            runs = (("banger firecracker", ["--runtime", "firecracker"]),
                    ("banger qemu-kvm cold", ["--runtime", "qemu", "--cold"]),
                    ("banger qemu-kvm clone", ["--runtime", "qemu"]))
            boots = (("firecracker", ["--runtime", "firecracker"]), ("qemu-kvm", ["--runtime", "qemu", "--cold"]))
            rows: dict[str, list[float]] = {"plain firecracker: exec to ssh true": []}
            rows.update({f"{label}: vm run --rm -- true": [] for label, _ in runs})
            rows.update({f"{label}: vm create (boot to ssh)": [] for label, _ in boots})
            rows.update({f"{label}: workspace prepare (200 files)": [] for label, _ in boots})
            notes: list[str] = []
            for i in range(args.runs):
                rows["plain firecracker: exec to ssh true"].append(plain_firecracker_seconds(host))
                for label, extra in runs:
                    rc, secs, note = timed_inside(host, "vm", "run", *extra, "--rm", "--", "true")
                    assert rc == 0, f"{label} run {i} failed"
                    rows[f"{label}: vm run --rm -- true"].append(secs)
                    notes += [f"{label} run {i}: {line}" for line in note.splitlines()]
                for label, extra in boots:
                    rc, secs, _ = timed_inside(host, "vm", "create", *extra, "--name", "bv")
                    assert rc == 0, f"{label} create {i} failed"
                    rows[f"{label}: vm create (boot to ssh)"].append(secs)
                    rc, secs, _ = timed_inside(host, "vm", "workspace", "prepare", "bv", "/root/src")
                    assert rc == 0, f"{label} prepare {i} failed"
                    rows[f"{label}: workspace prepare (200 files)"].append(secs)
                    host.banger("vm", "delete", "bv")
        except BaseException:
            sys.stderr.write(host.diagnostics())
            raise
        finally:
            home.cli("vm", "kill", host.name, timeout=120)
            home.cleanup()
    print(f"KVM host: boot {boot_host:.1f}s, setup (kvm_amd, venv from wheels, inner home) {setup_host:.1f}s, "
          f"first inner vm run (probe included) {warm:.1f}s, QEMU+KVM template build {template:.1f}s; "
          f"{args.runs} runs, medians:")
    for label, values in rows.items():
        print(f"  {label:45s} {statistics.median(values):6.1f}s   ({', '.join(f'{v:.1f}' for v in values)})")
    ratio = statistics.median(rows["banger firecracker: vm run --rm -- true"]) / statistics.median(
        rows["plain firecracker: exec to ssh true"])
    print(f"  banger firecracker vm run / plain firecracker: {ratio:.2f}x (target <= 1.10x)")
    clone, cold = (statistics.median(rows[f"banger qemu-kvm {k}: vm run --rm -- true"]) for k in ("clone", "cold"))
    print(f"  qemu-kvm vm run, clone / cold: {clone / cold:.2f}x")
    for note in notes:
        print(f"  note: {note}")
    print(f"wall time: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
