"""`banger vm run --rm -- true` end to end under QEMU TCG, split into guest boot and host-side work.

Run as root: python bench/vm_run.py [--runs 5]. Makes its own network namespace and BANGER_HOME, installs
the cached kernel and golden image (run the test suite once first), and reports medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from banger.testing.artifacts import VM_CONFIG, install_image, install_kernel, newest_cached
from banger.testing.daemon import Home
from banger.testing.netns import NetNS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with NetNS() as ns:
        home = Home(netns=ns.name)
        home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
        home.layout.config_file.write_text(VM_CONFIG)
        install_kernel(home.layout, newest_cached("kernels/*/debian-6.1"))
        install_image(home.layout, newest_cached("golden-image/*"))
        try:
            home.cli("daemon", "status", check=True)
            walls, boots = [], []
            for i in range(args.runs):
                t0 = time.perf_counter()
                home.cli("vm", "run", "--rm", "--name", f"r{i}", "--", "true", check=True)
                walls.append(time.perf_counter() - t0)
                with home.client() as c:
                    op = next(o for o in reversed(c.operations()) if o.kind == "vm.create")
                boots.append(op.timings.get("waiting for guest", 0.0))
            host = [w - b for w, b in zip(walls, boots, strict=True)]
            print(f"vm run --rm -- true under QEMU TCG, n={args.runs}")
            print(f"  end to end (CLI process)        median {statistics.median(walls):6.2f}s  "
                  f"min {min(walls):6.2f}s  max {max(walls):6.2f}s")
            print(f"  guest boot to SSH ready         median {statistics.median(boots):6.2f}s")
            print(f"  host side (CLI, daemon, disks, network, VMM launch, ssh true, delete)"
                  f"  median {statistics.median(host):6.2f}s")
        finally:
            home.cleanup()


if __name__ == "__main__":
    main()
