"""Kernel modules: ``.modinfo`` parsing, dependency resolution, the guest's load order and ``modules.dep``.

Debian's kernel package ships no ``modules.dep``; each module's dependencies are in its ELF ``.modinfo``
section (``depends=a,b``), which is what this module reads.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from banger.errors import IntegrityError, NotFound
from banger.kernels import elf

# What the guest needs before its root filesystem is mounted, in the order it must load. ext4 does not
# mount without crc32c, which it only soft-depends on (``softdep=pre: crypto-crc32c``), so it comes first.
GUEST_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
    "vmw_vsock_virtio_transport",
)
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")


@dataclass(frozen=True)
class ModuleInfo:
    name: str  # "ext4"
    path: str  # relative to lib/modules/<version>: "kernel/fs/ext4/ext4.ko"
    depends: tuple[str, ...] = ()
    softdep: str = ""
    aliases: tuple[str, ...] = field(default=(), repr=False)


def module_name(path: str) -> str:
    """The module name of a ``.ko`` path (``kernel/net/vmw_vsock/vsock.ko.xz`` -> ``vsock``)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def decompress_module(path: str, data: bytes) -> bytes:
    """The ELF bytes of a module file that may be xz- or zstd-compressed."""
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """``.modinfo`` key=value strings (NUL separated) as a multimap."""
    out: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            out.setdefault(key, []).append(value)
    return out


def module_info(path: str, data: bytes) -> ModuleInfo:
    """Parse one module file (``path`` relative to the module tree, ``data`` its possibly compressed bytes)."""
    image = decompress_module(path, data)
    modinfo = parse_modinfo(elf.sections(image, path).get(".modinfo", b""))
    deps = [d.strip().replace("-", "_") for d in ",".join(modinfo.get("depends", [])).split(",")]
    name = (modinfo.get("name") or [module_name(path)])[0].replace("-", "_")
    return ModuleInfo(name, path, tuple(d for d in deps if d), " ".join(modinfo.get("softdep", [])),
                      tuple(modinfo.get("alias", [])))


def scan_tree(moddir: Path) -> dict[str, ModuleInfo]:
    """Every module under ``moddir`` (a ``lib/modules/<version>`` directory), by name."""
    found = {}
    for p in sorted(moddir.rglob("*")):
        rel = p.relative_to(moddir).as_posix()
        if p.is_file() and rel.endswith(MODULE_SUFFIXES):
            info = module_info(rel, p.read_bytes())
            found[info.name] = info
    return found


def parse_builtin(text: str) -> set[str]:
    """Module names listed in ``modules.builtin`` (compiled into the kernel)."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(modules: dict[str, ModuleInfo], wanted: Iterable[str], builtin: set[str]) -> list[ModuleInfo]:
    """The modules to insmod, dependencies first, for ``wanted`` (built-in ones are skipped)."""
    order: list[ModuleInfo] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise IntegrityError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        info = modules.get(name)
        if info is None:
            raise NotFound(f"kernel module {name!r} is neither built in nor shipped by the kernel package",
                           hint="this kernel cannot boot a banger guest; choose another catalog entry")
        for dep in info.depends:
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(info)

    for name in wanted:
        visit(name, ())
    return order


def modules_dep(modules: dict[str, ModuleInfo]) -> str:
    """A ``modules.dep`` text: each module, then its transitive deps with the first-to-load last (depmod's order)."""
    lines = []
    for info in sorted(modules.values(), key=lambda m: m.path):
        deps = load_order(modules, info.depends, set()) if info.depends else []
        lines.append(f"{info.path}: " + " ".join(d.path for d in reversed(deps)))
    return "\n".join(line.rstrip() for line in lines) + "\n"
