"""Host-side VM create time by stage, per runtime, for a small and a 4x larger image; and boot-to-ready.

Run as root; it makes its own network namespace and re-runs itself inside it:

    python bench/vm_create.py [--runs 5] [--boots 3] [--kernel-dir DIR] [--image-dir DIR]

Host-side stages (no guest boot): root disk (qcow2 overlay for QEMU, sparse copy for Firecracker here, as
there is no device-mapper or reflink), work disk from the seed, TAP, and VMM launch up to the guest being
started (QEMU: QMP reports running; Firecracker: InstanceStart acknowledged), then the VMM is killed.
Boot-to-ready goes through the real daemon: `vm create` under QEMU TCG until sshd answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from banger import ipam
from banger.host import net, storage
from banger.host.vmm import Disk, LaunchSpec, driver_for
from banger.testing.artifacts import install_image, install_kernel, newest_cached, test_cache
from banger.testing.daemon import Home
from banger.testing.firecracker import firecracker_binary
from banger.testing.netns import NetNS

CACHE = test_cache()


def make_large_image(small: Path, dest: Path, factor: int = 4) -> Path:
    """A copy of ``small`` with (factor-1) x its allocated bytes of extra data inside the filesystem."""
    dest.mkdir(parents=True, exist_ok=True)
    rootfs = dest / "rootfs.ext4"
    used = os.stat(small / "rootfs.ext4").st_blocks * 512
    extra = used * (factor - 1)
    shutil.copy(small / "work-seed.ext4", dest / "work-seed.ext4")
    subprocess.run(["cp", "--sparse=always", small / "rootfs.ext4", rootfs], check=True)
    size = os.path.getsize(rootfs) + extra + (256 << 20)
    os.truncate(rootfs, size)
    subprocess.run(["resize2fs", "-f", rootfs], check=True, capture_output=True)
    filler = dest / "filler.bin"
    with open(filler, "wb") as f:
        for _ in range(extra // (16 << 20)):
            f.write(os.urandom(16 << 20))
    subprocess.run(["debugfs", "-w", "-R", f"write {filler} /var/filler.bin", rootfs], check=True, capture_output=True)
    filler.unlink()
    return dest


async def host_side(runtime: str, binary: str, image: Path, kernel: Path, work: Path) -> dict[str, float]:
    """One host-side create, timed by stage; everything is removed again."""
    t: dict[str, float] = {}
    vm_dir = work / f"vm-{runtime}-{time.monotonic_ns()}"
    vm_dir.mkdir()
    strategy = await storage.cow_for_host(runtime, vm_dir)
    t0 = time.perf_counter()
    root = await storage.make_root_disk(strategy, image / "rootfs.ext4", vm_dir, 8 << 30)
    t1 = time.perf_counter()
    await storage.make_work_disk(image / "work-seed.ext4", vm_dir / "work.ext4", 8 << 30)
    t2 = time.perf_counter()
    tap = ipam.tap_name(ipam.daemon_tag(str(work)), vm_dir.name)
    await net.create_tap(tap, "bench0")
    t3 = time.perf_counter()
    driver = driver_for(runtime, firecracker_bin=binary, qemu_bin="qemu-system-x86_64")
    spec = LaunchSpec(vm_id=vm_dir.name[-12:], name="bench", kernel=kernel / "vmlinux", initrd=kernel / "initrd.img",
                      cmdline="console=ttyS0 reboot=k panic=1 root=/dev/vda", tap=tap, mac=None, vcpu=1,
                      memory_mib=512, vm_dir=vm_dir,
                      disks=(Disk(root.path, format=root.format), Disk(vm_dir / "work.ext4"),
                             Disk(kernel / "modules.ext4", read_only=True)))
    handle = await driver.launch(spec)
    t4 = time.perf_counter()
    await driver.kill(handle)
    await net.delete_tap(tap)
    await storage.release_root_disk(root)
    shutil.rmtree(vm_dir)
    t.update({"root disk": t1 - t0, "work disk": t2 - t1, "tap": t3 - t2, "vmm launch": t4 - t3, "total": t4 - t0})
    return t


async def inner(args: argparse.Namespace) -> None:
    kernel, small = Path(args.kernel_dir), Path(args.image_dir)
    binary = str(firecracker_binary(CACHE))
    await net.ensure_bridge("bench0", "10.250.0.1", 24)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        large = make_large_image(small, Path(tmp) / "large")
        sizes = {k: os.stat(p / "rootfs.ext4").st_blocks * 512 >> 20 for k, p in (("small", small), ("4x", large))}
        print(f"images: small {sizes['small']} MiB allocated, 4x {sizes['4x']} MiB allocated")
        print(f"{'runtime':<12}{'image':<7}" + "".join(f"{s:>12}" for s in
              ("root disk", "work disk", "tap", "vmm launch", "total")) + "   (median seconds)")
        for runtime in ("qemu", "firecracker"):
            for label, image in (("small", small), ("4x", large)):
                runs = [await host_side(runtime, binary, image, kernel, Path(tmp)) for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                print(f"{runtime:<12}{label:<7}" + "".join(f"{med[k]:>12.3f}" for k in med))
    await net.remove_bridge("bench0")


def boots(args: argparse.Namespace, ns: NetNS) -> None:
    home = Home(netns=ns.name)
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text('runtime = "qemu"\nfirecracker_bin = "/nonexistent"\n'
                                       '[vm_defaults]\nvcpu = 2\nmemory_mib = 768\ndisk_size = "2G"\n')
    install_kernel(home.layout, Path(args.kernel_dir))
    install_image(home.layout, Path(args.image_dir))
    try:
        results = []
        for i in range(args.boots):
            t0 = time.perf_counter()
            home.cli("vm", "create", "--name", f"b{i}", "--json", check=True)
            wall = time.perf_counter() - t0
            with home.client() as c:
                op = next(o for o in reversed(c.operations()) if o.kind == "vm.create")
            results.append((wall, op.timings))
            home.cli("vm", "delete", f"b{i}", check=True)
        ready = [r[1].get("waiting for guest", 0) for r in results]
        host = [wall - timings.get("waiting for guest", 0) for wall, timings in results]
        print(f"\nQEMU TCG via bangerd, n={len(results)}:")
        print(f"  vm create wall (CLI process, to sshd ready)  median {statistics.median(r[0] for r in results):.2f}s")
        print(f"  guest boot to sshd banner                    median {statistics.median(ready):.2f}s")
        print(f"  everything else (CLI, daemon, disks, tap)    median {statistics.median(host):.2f}s")
        print(f"  stages of the last run: {json.dumps(results[-1][1])}")
    finally:
        home.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--kernel-dir", default=None)
    parser.add_argument("--image-dir", default=None)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.kernel_dir = args.kernel_dir or str(newest_cached("kernels/*/debian-6.1"))
    args.image_dir = args.image_dir or str(newest_cached("golden-image/*"))
    if args.inner:
        asyncio.run(inner(args))
        return
    with NetNS() as ns:
        subprocess.run(ns.argv([sys.executable, __file__, "--inner", "--runs", str(args.runs),
                                "--kernel-dir", args.kernel_dir, "--image-dir", args.image_dir]), check=True)
        if args.boots:
            boots(args, ns)


if __name__ == "__main__":
    main()
