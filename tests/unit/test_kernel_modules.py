"""ELF, .modinfo, .deb and vmlinux parsing on the real Debian kernel package (cached by the kernel fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.errors import IntegrityError, NotFound
from banger.kernels import deb, elf, modules
from banger.kernels.manifest import read_manifest
from banger.kernels.vmlinux import extract_vmlinux

WANT = ("ext4", "jbd2", "mbcache", "crc16", "crc32c_generic", "virtio_mmio", "virtio", "virtio_ring",
        "vmw_vsock_virtio_transport", "vmw_vsock_virtio_transport_common", "vsock")


@pytest.fixture(scope="module")
def kernel_deb(default_kernel: Path, banger_test_cache: Path) -> Path:
    sha = read_manifest(default_kernel).packages["kernel"].sha256
    return banger_test_cache / "debs" / f"{sha}.deb"


def _wanted(name: str) -> bool:
    return name.startswith("boot/vmlinuz-") or (".ko" in name and modules.module_name(name) in WANT)


@pytest.fixture(scope="module")
def members(kernel_deb: Path) -> dict[str, bytes]:
    return deb.read_members(kernel_deb, _wanted)


@pytest.fixture(scope="module")
def real_modules(members: dict[str, bytes]) -> dict[str, modules.ModuleInfo]:
    infos = {}
    for name, data in members.items():
        if name.startswith("boot/"):
            continue
        rel = name.split("/", 3)[3]  # strip lib/modules/<version>/
        infos[modules.module_name(rel)] = modules.module_info(rel, data)
    return infos


def test_ar_members(kernel_deb: Path) -> None:
    names = [m.name for m in deb.ar_members(kernel_deb)]
    assert names[0] == "debian-binary" and any(n.startswith("data.tar") for n in names)


def test_modinfo_depends(real_modules: dict[str, modules.ModuleInfo]) -> None:
    assert set(real_modules) == set(WANT)
    assert set(real_modules["ext4"].depends) == {"jbd2", "mbcache", "crc16"}
    assert "crc32c" in real_modules["ext4"].softdep
    assert real_modules["ext4"].path == "kernel/fs/ext4/ext4.ko"
    assert real_modules["crc16"].depends == ()


def test_load_order(real_modules: dict[str, modules.ModuleInfo]) -> None:
    order = [m.name for m in modules.load_order(real_modules, ["crc32c_generic", "ext4",
                                                               "vmw_vsock_virtio_transport"], set())]
    assert order.index("crc32c_generic") < order.index("ext4")
    for dep in ("jbd2", "mbcache", "crc16"):
        assert order.index(dep) < order.index("ext4")
    for dep in ("vsock", "virtio", "virtio_ring", "vmw_vsock_virtio_transport_common"):
        assert order.index(dep) < order.index("vmw_vsock_virtio_transport")
    assert len(order) == len(set(order))
    skipped = [m.name for m in modules.load_order(real_modules, ["ext4"], {"crc16"})]
    assert "crc16" not in skipped
    with pytest.raises(NotFound, match="'nosuch'"):
        modules.load_order(real_modules, ["nosuch"], set())


def test_modules_dep_text(real_modules: dict[str, modules.ModuleInfo]) -> None:
    lines = dict(line.split(":", 1) for line in modules.modules_dep(real_modules).splitlines())
    deps = lines["kernel/fs/ext4/ext4.ko"].split()
    assert set(deps) == {"kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko"}
    assert lines["kernel/lib/crc16.ko"] == ""


def test_elf_checks(members: dict[str, bytes]) -> None:
    with pytest.raises(IntegrityError, match="not an ELF"):
        elf.header(b"MZ" + b"\0" * 100)
    with pytest.raises(IntegrityError, match="not x86-64"):
        elf.require_x86_64(b"\x7fELF\x02\x01" + b"\0" * 12 + b"\xb7\x00" + b"\0" * 44)  # aarch64
    vmlinux = extract_vmlinux(next(v for k, v in members.items() if k.startswith("boot/vmlinuz-")))
    assert elf.header(vmlinux).machine == elf.EM_X86_64
    with pytest.raises(IntegrityError, match="no xz stream"):
        extract_vmlinux(b"\0" * 4096)
