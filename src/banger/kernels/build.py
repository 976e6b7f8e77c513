"""Building banger's default kernel from Debian: vmlinux + initrd + modules.ext4 + manifest."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TypeVar

from banger.errors import IntegrityError
from banger.host import ext4
from banger.host.http import client, sha256_file
from banger.host.run import run, which
from banger.kernels import deb, modules
from banger.kernels.catalog import CatalogEntry, DebianSource
from banger.kernels.debian_archive import Archive, Package
from banger.kernels.initrd import BootModule, build_initrd
from banger.kernels.manifest import (
    INITRD,
    MODULES_IMAGE,
    VMLINUX,
    KernelManifest,
    ResolvedPackage,
    now_iso,
    write_manifest,
)
from banger.kernels.vmlinux import extract_vmlinux
from banger.progress import Reporter
from banger.threads import in_thread

T = TypeVar("T")


def _resolved(p: Package) -> ResolvedPackage:
    return ResolvedPackage(name=p.name, version=p.version, filename=p.filename, sha256=p.sha256, size=p.size)


def _kernel_member(name: str) -> bool:
    return name.startswith("boot/vmlinuz-") or name.startswith("lib/modules/")


def module_dir(tree: Path) -> tuple[str, Path]:
    """``(version, tree/lib/modules/<version>)`` of an extracted kernel package."""
    found = [d for d in (tree / "lib/modules").iterdir() if d.is_dir()] if (tree / "lib/modules").is_dir() else []
    if len(found) != 1:
        raise IntegrityError(f"expected one lib/modules/<version> in the kernel package, found {len(found)}")
    return found[0].name, found[0]


def boot_modules(moddir: Path) -> list[BootModule]:
    """The guest's boot modules in load order, read from an extracted module tree."""
    index = modules.scan_tree(moddir)
    builtin_file = moddir / "modules.builtin"
    builtin = modules.parse_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    order = modules.load_order(index, modules.GUEST_MODULES, builtin)
    return [BootModule(m.path, modules.decompress_module(m.path, (moddir / m.path).read_bytes())) for m in order]


async def write_modules_dep(tree: Path, version: str, moddir: Path, reporter: Reporter) -> str:
    """Index the module tree (host ``depmod`` when present) and say which way it was done."""
    if which("depmod"):
        await run(["depmod", "-b", tree, version])
        return "depmod"
    text = await in_thread(lambda: modules.modules_dep(modules.scan_tree(moddir)))
    (moddir / "modules.dep").write_text(text)
    reporter.note("warning: depmod not found on the host (apt-get install kmod); modules.ext4 has a text "
                 "modules.dep only, which busybox modprobe reads but kmod's modprobe does not")
    return "banger"


async def _fetch(archive: Archive, src: DebianSource, cache_dir: Path, reporter: Reporter) -> tuple[Package, ...]:
    reporter.stage(f"resolving {src.package_regex} in {archive.mirror} {src.suite}")
    await archive.load()
    kernel_pkg = archive.resolve(src.package_regex)
    busybox_pkg = archive.resolve(f"^{src.busybox_package}$")
    reporter.log(f"resolved {kernel_pkg.name} {kernel_pkg.version} and {busybox_pkg.name} {busybox_pkg.version}")
    return kernel_pkg, busybox_pkg


async def build_debian_kernel(
    entry: CatalogEntry, dest: Path, *, mirror: str, cache_dir: Path, reporter: Reporter
) -> KernelManifest:
    """Build ``dest/{vmlinux, initrd.img, modules.ext4, manifest.json}`` for a ``debian`` catalog entry."""
    src = entry.source
    if not isinstance(src, DebianSource):
        raise TypeError(f"{entry.name} is not built from Debian")
    async with client() as http:
        archive = Archive(mirror, src.suite, component=src.component, arch=src.arch, client=http)
        kernel_pkg, busybox_pkg = await _fetch(archive, src, cache_dir, reporter)
        reporter.stage(f"downloading {kernel_pkg.name}")
        kernel_deb = await archive.download(kernel_pkg, cache_dir, reporter)
        reporter.stage(f"downloading {busybox_pkg.name}")
        busybox_deb = await archive.download(busybox_pkg, cache_dir, reporter)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kernel-build-", dir=dest.parent) as work:
        made = await _assemble(Path(work), dest, kernel_deb, busybox_deb, reporter)
    digests = {f: await in_thread(sha256_file, dest / f) for f in (VMLINUX, INITRD, MODULES_IMAGE)}
    manifest = KernelManifest(
        name=entry.name, kernel_version=made["version"], source="debian", mirror=mirror, suite=src.suite,
        packages={"kernel": _resolved(kernel_pkg), "busybox": _resolved(busybox_pkg)},
        files=digests,
        boot_modules=made["boot_modules"].split(), modules_dep_by=made["modules_dep_by"], built_at=now_iso(),
    )
    write_manifest(dest, manifest)
    return manifest


async def _assemble(work: Path, dest: Path, kernel_deb: Path, busybox_deb: Path, reporter: Reporter) -> dict[str, str]:
    tree = work / "tree"
    reporter.stage("unpacking the kernel package")
    await in_thread(deb.extract, kernel_deb, tree, _kernel_member)
    version, moddir = module_dir(tree)
    reporter.stage("extracting vmlinux")
    bzimage = (tree / "boot" / f"vmlinuz-{version}").read_bytes()
    (dest / VMLINUX).write_bytes(await in_thread(extract_vmlinux, bzimage))
    reporter.stage("building the initrd")
    busybox = (await in_thread(deb.read_members, busybox_deb, lambda n: n == "bin/busybox")).get("bin/busybox")
    if busybox is None:
        raise IntegrityError(f"{busybox_deb.name} has no bin/busybox")
    boot = await in_thread(boot_modules, moddir)
    (dest / INITRD).write_bytes(await in_thread(build_initrd, busybox, version, boot))
    reporter.stage("building modules.ext4")
    dep_by = await write_modules_dep(tree, version, moddir, reporter)
    await ext4.make_from_tree(moddir, dest / MODULES_IMAGE, ext4.size_for_tree(moddir), label="banger-modules")
    return {"version": version, "boot_modules": " ".join(m.path for m in boot), "modules_dep_by": dep_by}
