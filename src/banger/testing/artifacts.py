"""Installing prebuilt kernel and image directories into a test's BANGER_HOME without copying gigabytes.

Large read-only files (vmlinux, initrd, modules disk, rootfs, work seed) are symlinked from the test
cache; the manifest is copied and the rows are written with the real store, as a pull would.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from banger.model import Image, Kernel
from banger.paths import Layout
from banger.store.db import open_db
from banger.store.repo import Store

# The config system tests run VMs with: QEMU (no KVM here), no Firecracker probe, small VMs, cold boots
# (each test has a home of its own, so a template would be built for every test and used once; the clone
# path has tests of its own that turn snapshots on).
VM_CONFIG = """\
runtime = "qemu"
firecracker_bin = "/nonexistent/firecracker"
tap_pool_size = 1
snapshots = false
[vm_defaults]
vcpu = 2
memory_mib = 768
disk_size = "2G"
"""
def test_cache() -> Path:
    """``$BANGER_TEST_CACHE`` (default /var/tmp/banger-test-cache), where tests build kernels and images."""
    return Path(os.environ.get("BANGER_TEST_CACHE", "/var/tmp/banger-test-cache"))


def newest_cached(pattern: str) -> Path:
    """The most recent cached artifact matching ``pattern`` (benchmarks reuse what the tests built)."""
    found = sorted(test_cache().glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no {pattern} under {test_cache()}: run the test suite once (it builds them)")
    return found[-1]


KERNEL_FILES = ("vmlinux", "initrd.img", "modules.ext4")
IMAGE_FILES = ("rootfs.ext4", "work-seed.ext4")


def _link_dir(src: Path, dest: Path, files: tuple[str, ...]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:
        if (src / name).exists():
            (dest / name).unlink(missing_ok=True)
            (dest / name).symlink_to((src / name).resolve())
    shutil.copy2(src / "manifest.json", dest / "manifest.json")


def install_kernel(layout: Layout, kernel_dir: Path, name: str = "debian-6.1") -> Kernel:
    dest = layout.kernels_dir / name
    _link_dir(kernel_dir, dest, KERNEL_FILES)
    manifest = json.loads((dest / "manifest.json").read_text())
    kernel = Kernel(name=name, version=str(manifest.get("kernel_version", "")), dir=str(dest), source="catalog",
                    manifest=manifest)
    _put(layout, lambda s: s.put_kernel(kernel))
    return kernel


def install_image(layout: Layout, image_dir: Path, name: str = "debian-bookworm") -> Image:
    dest = layout.images_dir / name
    _link_dir(image_dir, dest, IMAGE_FILES)
    manifest = json.loads((dest / "manifest.json").read_text())
    image = Image(name=name, distro=str(manifest.get("distro", "")), kernel_ref=str(manifest.get("kernel_ref", "")),
                  source=str(manifest.get("source", "build")), dir=str(dest),
                  rootfs_size=int(manifest.get("rootfs_size", 0)), manifest=manifest)
    _put(layout, lambda s: s.put_image(image))
    return image


def _put(layout: Layout, write: object) -> None:
    layout.ensure()
    store = Store(open_db(layout.db))
    try:
        write(store)  # type: ignore[operator]
    finally:
        store.close()


def seed_stopped_vms(layout: Layout, vms: dict[str, str], image: str = "img") -> None:
    """Rows for stopped VMs (id -> name) over a registered stub image, for tests that need VMs to exist
    but never boot them (names, completion, action messages). The daemon must not be running."""
    from banger.images.manifest import ImageManifest, write_manifest
    from banger.model import VM, VMSpec

    image_dir = layout.images_dir / image
    image_dir.mkdir(parents=True)
    manifest = ImageManifest(name=image, source="register")
    write_manifest(image_dir, manifest)

    def write(store: Store) -> None:
        store.put_image(Image(name=image, source="register", dir=str(image_dir),
                              manifest=manifest.model_dump(mode="json")))
        for vm_id, name in vms.items():
            vm_dir = layout.vms_dir / vm_id
            vm_dir.mkdir(parents=True, exist_ok=True)
            store.insert_vm(VM(id=vm_id, name=name, spec=VMSpec(image=image), state="stopped", vm_dir=str(vm_dir)))

    _put(layout, write)
