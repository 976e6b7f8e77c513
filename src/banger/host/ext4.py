"""ext4 images through e2fsprogs: build from a directory tree without mounting, inspect, check, resize."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from banger.errors import HostError, IntegrityError
from banger.host.run import run

MIN_SIZE = 64 << 20


def tree_size(root: Path) -> int:
    """Apparent bytes under ``root`` plus a per-inode allowance (symlinks not followed)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (1 + len(dirnames))
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += ((st.st_size + 4095) // 4096) * 4096 + 256
    return total


def size_for_tree(root: Path, *, headroom: float = 0.25, minimum: int = MIN_SIZE) -> int:
    """An image size that fits ``root`` with ``headroom`` spare, rounded up to 16 MiB."""
    want = int(tree_size(root) * (1 + headroom)) + (32 << 20)
    want = max(want, minimum)
    return (want + (16 << 20) - 1) // (16 << 20) * (16 << 20)


async def make_from_tree(tree: Path | None, image: Path, size: int, *, label: str = "") -> None:
    """Create a sparse ext4 ``image`` of ``size`` bytes holding ``tree`` (owners and modes kept)."""
    image.parent.mkdir(parents=True, exist_ok=True)
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    # 4 KiB blocks even for small images: a 1 KiB-block seed grows to a big work disk far more slowly.
    argv: list[str | os.PathLike[str]] = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0"]
    if label:
        argv += ["-L", label[:16]]
    if tree is not None:
        argv += ["-d", tree]
    argv += [image]
    try:
        await run(argv)
    except BaseException:
        image.unlink(missing_ok=True)
        raise


async def own_by_root(image: Path, paths: Sequence[str]) -> None:
    """Make ``paths`` (fixed names, e.g. ``/root``) of a freshly made, never-mounted ``image`` root's.

    ``mkfs.ext4 -d`` keeps the builder's uid; an owner daemon (not root) builds images of its own files.
    """
    for p in paths:
        if not re.fullmatch(r"/[A-Za-z0-9._/-]+", p):
            raise ValueError(f"{p!r} is not a plain path")
    script = "".join(f"sif {p} uid 0\nsif {p} gid 0\n" for p in paths)
    result = await run(["debugfs", "-w", "-f", "-", image], input=script.encode())
    if "not found" in result.err or "Couldn't" in result.err:
        raise HostError(f"could not give {', '.join(paths)} in {image} to root: {result.err.strip()}")


async def debugfs(image: Path, *requests: str) -> str:
    """Run read-only debugfs requests (``stat /etc/passwd``, ``ls -l /root``) and return the output."""
    result = await run(["debugfs", "-f", "-", image], input="\n".join(requests).encode())
    return result.out


async def verify_clean(image: Path, what: str) -> None:
    """IntegrityError unless ``e2fsck -fn`` (read-only, changes nothing) finds ``image`` consistent.

    Images that arrive as bytes (bundles, registered rootfs files) are checked before they are accepted:
    a filesystem with duplicate or '/'-bearing directory entries, or any other damage, is refused.
    """
    result = await run(["e2fsck", "-f", "-n", image], check=False, timeout=600)
    if result.returncode != 0:
        problems = [ln.strip() for ln in result.out.splitlines()
                    if ln.strip() and not ln.startswith(("Pass ", "e2fsck ")) and "WARNING" not in ln
                    and not ln.strip().endswith(("? no", "non-contiguous)"))]
        found = "; ".join(problems[:3])
        raise IntegrityError(
            f"{what} is not a clean ext4 filesystem (e2fsck -fn exited {result.returncode}: "
            f"{found or result.err.strip()[-200:] or 'no details'})",
            hint="the image is damaged or crafted; nothing was imported. Rebuild or re-export it",
        )


async def check(image: Path) -> None:
    """Force a full fsck, repairing what is safe (required before resize2fs)."""
    result = await run(["e2fsck", "-f", "-y", image], check=False)
    if result.returncode not in (0, 1):
        raise HostError(f"e2fsck found errors it could not fix in {image}: {result.err.strip()[-300:]}")


async def grow(image: Path, size: int) -> None:
    """Grow ``image`` to ``size`` bytes (file then filesystem); shrinking is refused by the caller."""
    await check(image)
    with open(image, "r+b") as f:
        f.truncate(size)
    await run(["resize2fs", image])
