"""The local kernel store: ``<state>/kernels/<name>/{vmlinux, initrd.img?, modules.ext4?, manifest.json}``.

Every change is staged in a hidden directory beside the target and renamed into place in one step, so a
failed or cancelled pull or import leaves nothing behind and never a half-written kernel.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from banger.errors import AlreadyExists, InvalidArgument, NotFound
from banger.host import http
from banger.kernels import elf
from banger.kernels.build import build_debian_kernel
from banger.kernels.catalog import CatalogEntry, DebianSource, UrlSource
from banger.kernels.manifest import (
    INITRD,
    MANIFEST,
    VMLINUX,
    KernelManifest,
    now_iso,
    read_manifest,
    write_manifest,
)
from banger.names import validate_name
from banger.progress import NullReporter, Reporter
from banger.threads import in_thread

DEFAULT_MIRROR = "http://deb.debian.org/debian"


def kernel_dir(kernels_dir: Path, name: str) -> Path:
    """Where kernel ``name`` lives (the name is validated, so the path stays inside ``kernels_dir``)."""
    return kernels_dir / validate_name("kernel", name)


def list_kernels(kernels_dir: Path) -> list[KernelManifest]:
    """Manifests of the installed kernels, by name (staging directories and strays are ignored)."""
    if not kernels_dir.is_dir():
        return []
    found = []
    for d in sorted(kernels_dir.iterdir()):
        if not d.name.startswith(".") and (d / MANIFEST).is_file():
            found.append(read_manifest(d))
    return found


def get(kernels_dir: Path, name: str) -> KernelManifest:
    """The manifest of installed kernel ``name``; NotFound with the pull command otherwise."""
    d = kernel_dir(kernels_dir, name)
    if not (d / MANIFEST).is_file():
        raise NotFound(f"kernel {name!r} is not installed", hint=f"run `banger kernel pull {name}`")
    return read_manifest(d)


def remove(kernels_dir: Path, name: str) -> None:
    """Delete installed kernel ``name`` (callers check that no VM or image still uses it)."""
    d = kernel_dir(kernels_dir, name)
    if not d.is_dir():
        raise NotFound(f"kernel {name!r} is not installed", hint="see `banger kernel list`")
    trash = Path(tempfile.mkdtemp(prefix=f".rm-{name}-", dir=kernels_dir))
    os.rename(d, trash / name)  # the name disappears atomically; the bytes go after
    shutil.rmtree(trash)


def _check_free(target: Path, name: str, force: bool) -> None:
    if target.exists() and not force:
        raise AlreadyExists(f"kernel {name!r} is already installed",
                            hint="pass --force to replace it, or `banger kernel rm` it first")


@asynccontextmanager
async def staged(kernels_dir: Path, name: str, force: bool) -> AsyncIterator[Path]:
    """A fresh staging directory that becomes ``kernels_dir/name`` if the body succeeds, else vanishes."""
    target = kernel_dir(kernels_dir, name)
    _check_free(target, name, force)
    kernels_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".stage-{name}-", dir=kernels_dir))
    try:
        yield stage
        _check_free(target, name, force)
        _swap_in(stage, target)
    finally:
        # Also runs on CancelledError: nothing half-made stays behind.
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.rename(target, old)
    os.rename(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


async def pull(
    kernels_dir: Path,
    entry: CatalogEntry,
    force: bool = False,
    *,
    mirror: str = DEFAULT_MIRROR,
    cache_dir: Path,
    reporter: Reporter | None = None,
) -> KernelManifest:
    """Fetch or build catalog ``entry`` into ``kernels_dir/<entry.name>``; AlreadyExists without ``force``."""
    reporter = reporter or NullReporter()
    async with staged(kernels_dir, entry.name, force) as stage:
        if isinstance(entry.source, DebianSource):
            manifest = await build_debian_kernel(entry, stage, mirror=mirror, cache_dir=cache_dir,
                                                 reporter=reporter)
        else:
            manifest = await _pull_url(entry, entry.source, stage, reporter)
    return manifest


async def _pull_url(entry: CatalogEntry, src: UrlSource, stage: Path, reporter: Reporter) -> KernelManifest:
    reporter.stage(f"downloading {src.vmlinux_url}")
    files = {VMLINUX: await http.download(src.vmlinux_url, stage / VMLINUX, sha256=src.vmlinux_sha256,
                                          reporter=reporter)}
    await in_thread(check_vmlinux, stage / VMLINUX)
    if src.initrd_url:
        reporter.stage(f"downloading {src.initrd_url}")
        files[INITRD] = await http.download(src.initrd_url, stage / INITRD, sha256=src.initrd_sha256,
                                            reporter=reporter)
    manifest = KernelManifest(name=entry.name, kernel_version="", source="url", files=files, built_at=now_iso())
    write_manifest(stage, manifest)
    return manifest


def check_vmlinux(path: Path) -> None:
    """IntegrityError unless ``path`` is an uncompressed x86-64 ELF kernel."""
    with open(path, "rb") as f:
        elf.require_x86_64(f.read(64), str(path))


async def import_kernel(
    kernels_dir: Path, name: str, vmlinux: Path, initrd: Path | None = None, *, force: bool = False
) -> KernelManifest:
    """Install a local ``vmlinux`` (and optional ``initrd``) as kernel ``name``, copying the files."""
    for path in (vmlinux, initrd):
        if path is not None and not path.is_file():
            raise InvalidArgument(f"{path} is not a file", hint="give the path of an uncompressed vmlinux")
    check_vmlinux(vmlinux)
    async with staged(kernels_dir, name, force) as stage:
        await in_thread(shutil.copyfile, vmlinux, stage / VMLINUX)
        if initrd is not None:
            await in_thread(shutil.copyfile, initrd, stage / INITRD)
        files = {f: http.sha256_file(stage / f) for f in (VMLINUX, INITRD) if (stage / f).exists()}
        manifest = KernelManifest(name=name, kernel_version="", source="import", files=files, built_at=now_iso())
        write_manifest(stage, manifest)
    return manifest
