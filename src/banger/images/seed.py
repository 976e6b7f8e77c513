"""The work seed: the small ext4 image that fills a new VM's work disk (mounted at ``/root``).

Golden builds make it from the tree's ``/root`` and also keep a copy of that tree at
``/usr/share/banger/work-seed`` inside the rootfs, whose own ``/root`` stays empty (it is only a
mountpoint). Images that arrive without a seed (bundles, registered rootfs files) get one rebuilt
from their rootfs with ``debugfs rdump``, no mount needed: the copy under ``/usr/share/banger`` when
present, else whatever the rootfs has in ``/root``, else an empty home.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

from banger.host.ext4 import make_from_tree, size_for_tree
from banger.host.run import run

SEED_COPY = "/usr/share/banger/work-seed"
SEED_SOURCES = (SEED_COPY, "/root")
LABEL = "banger-work"
MIN_SIZE = 512 << 20


async def make_seed_image(tree: Path, image: Path) -> int:
    """Build the work seed ``image`` from ``tree`` (which becomes ``/root``, mode 0700); return its size.

    The seed is sparse and at least :data:`MIN_SIZE`, so mkfs picks 4 KiB blocks and the work disk
    grows well to gigabytes (a smaller filesystem would get 1 KiB blocks for life).
    """
    size = max(size_for_tree(tree), MIN_SIZE)
    await make_from_tree(tree, image, size, label=LABEL)
    # mkfs -d keeps owners and modes of everything but the root directory itself.
    await run(["debugfs", "-w", "-R", "sif / mode 040700", image])
    return size


async def rdump(rootfs: Path, path: str, into: Path) -> Path | None:
    """Copy directory ``path`` out of ``rootfs`` into ``into`` (owners and modes kept); None if absent."""
    await run(["debugfs", "-R", f"rdump {path} {into}", rootfs])
    got = into / Path(path).name
    return got if got.is_dir() else None


async def extract_work_seed(rootfs: Path, image: Path) -> int:
    """Build the work seed ``image`` from what ``rootfs`` holds for ``/root``; return the seed's size."""
    scratch = image.parent / f".seed-{uuid.uuid4().hex[:8]}"
    try:
        tree = await _first_seed_tree(rootfs, scratch)
        return await make_seed_image(tree, image)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


async def _first_seed_tree(rootfs: Path, scratch: Path) -> Path:
    for index, source in enumerate(SEED_SOURCES):
        into = scratch / str(index)
        into.mkdir(parents=True)
        tree = await rdump(rootfs, source, into)
        if tree is not None and any(tree.iterdir()):
            return tree
    empty = scratch / "empty"
    empty.mkdir()
    return empty
