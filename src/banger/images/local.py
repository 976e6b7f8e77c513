"""The local image store: ``<state>/images/<name>/`` directories, staged beside their target and renamed in."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from banger.errors import AlreadyExists, InvalidArgument, NotFound
from banger.host.ext4 import verify_clean
from banger.host.http import sha256_file
from banger.host.run import run
from banger.images.manifest import ROOTFS, WORK_SEED, ImageManifest, read_manifest, write_manifest
from banger.images.seed import empty_seed
from banger.names import validate_name

KERNEL = "vmlinux"
INITRD = "initrd.img"
EXT4_MAGIC_OFFSET = 1080


def image_dir(images_dir: Path, name: str) -> Path:
    """The directory of image ``name`` (validated, never a path outside ``images_dir``)."""
    return images_dir / validate_name("image", name)


def list_images(images_dir: Path) -> list[ImageManifest]:
    """Manifests of every committed image, sorted by name (staging and trash dirs are skipped)."""
    if not images_dir.is_dir():
        return []
    found = [d for d in sorted(images_dir.iterdir()) if not d.name.startswith(".") and d.is_dir()]
    return [read_manifest(d) for d in found if (d / "manifest.json").exists()]


def get_image(images_dir: Path, name: str) -> ImageManifest:
    """The manifest of image ``name``; NotFound when it is not in the store."""
    path = image_dir(images_dir, name)
    if not (path / "manifest.json").is_file():
        raise NotFound(f"image {name!r} not found", hint="see `banger image list`, or `banger image build`")
    return read_manifest(path)


async def remove_image(images_dir: Path, name: str) -> None:
    """Delete image ``name``: renamed out of sight first, so a crash never leaves half an image listed."""
    path = image_dir(images_dir, name)
    if not path.is_dir():
        raise NotFound(f"image {name!r} not found", hint="see `banger image list`")
    trash = images_dir / f".trash-{name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    await asyncio.to_thread(shutil.rmtree, trash, True)


@asynccontextmanager
async def staging(dest: Path) -> AsyncIterator[Path]:
    """A temp dir beside ``dest``, renamed to ``dest`` when the block succeeds and removed when it fails."""
    if dest.exists():
        raise AlreadyExists(f"{dest} already exists", hint="remove the image first, or pick another name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            raise AlreadyExists(f"{dest} appeared while it was being built", hint="retry with another name")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            await asyncio.to_thread(shutil.rmtree, tmp, True)


async def copy_sparse(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` keeping holes (images are mostly holes)."""
    await run(["cp", "--sparse=always", "--reflink=auto", "--", src, dst])


def is_ext4(path: Path) -> bool:
    """Whether ``path`` starts like an ext2/3/4 filesystem (superblock magic 0xEF53)."""
    with open(path, "rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        return f.read(2) == b"\x53\xef"


def _check_register_args(rootfs: Path, kernel_ref: str | None, kernel: Path | None, initrd: Path | None) -> None:
    if not rootfs.is_file() or not is_ext4(rootfs):
        raise InvalidArgument(f"{rootfs} is not an ext4 image file", hint="pass a raw ext4 rootfs image")
    if bool(kernel) != bool(initrd):
        raise InvalidArgument("--kernel and --initrd go together", hint="pass both, or --kernel-ref instead")
    if kernel and kernel_ref:
        raise InvalidArgument("pass either a kernel catalog name or --kernel/--initrd, not both")
    for path in (kernel, initrd):
        if path and not path.is_file():
            raise InvalidArgument(f"{path} is not a file")


async def register(
    images_dir: Path,
    name: str,
    rootfs: Path,
    *,
    kernel_ref: str | None = None,
    kernel: Path | None = None,
    initrd: Path | None = None,
) -> ImageManifest:
    """Add an existing ext4 ``rootfs`` as image ``name``, with a catalog kernel or its own kernel+initrd.

    The rootfs must pass ``e2fsck -fn``; its work seed is empty and filled by the guest from the image's own
    ``/root`` at first boot (see :mod:`banger.images.seed`): nothing of it is unpacked on the host.
    """
    dest = image_dir(images_dir, name)
    _check_register_args(rootfs, kernel_ref, kernel, initrd)
    async with staging(dest) as tmp:
        await copy_sparse(rootfs, tmp / ROOTFS)
        if kernel and initrd:
            await copy_sparse(kernel, tmp / KERNEL)
            await copy_sparse(initrd, tmp / INITRD)
        await verify_clean(tmp / ROOTFS, f"rootfs {rootfs}")
        seed_size = await empty_seed(tmp / WORK_SEED)  # the guest fills /root from its image at first boot
        manifest = ImageManifest(
            name=name,
            distro="unknown",
            kernel_ref="" if kernel else (kernel_ref or "debian-6.1"),
            source="register",
            rootfs_size=(tmp / ROOTFS).stat().st_size,
            rootfs_sha256=await asyncio.to_thread(sha256_file, tmp / ROOTFS),
            work_seed_size=seed_size,
            extra={"registered_from": str(rootfs.resolve())},
        )
        write_manifest(tmp, manifest)
    return manifest
