"""The work seed: the small ext4 image that fills a new VM's work disk (mounted at ``/root``).

Golden builds and OCI pulls make it from the tree's ``/root`` (which banger itself unpacked) and mark it
with ``.banger-seeded``; golden builds also keep a copy of that tree at ``/usr/share/banger/work-seed``
inside the rootfs, whose own ``/root`` stays empty (it is only a mountpoint). Images that arrive as bytes
banger did not unpack (bundles, registered rootfs files) get an empty, unmarked seed: nothing of such an
image is unpacked on the host, where a tool could be made to follow a crafted symlink or trust a crafted
name. The guest fills the work disk from its own image at first boot instead (``banger-config``: the copy
under ``/usr/share/banger`` when present, else the image's ``/root``).
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

from banger.host.ext4 import make_from_tree, size_for_tree
from banger.host.run import run

SEED_COPY = "/usr/share/banger/work-seed"
SEEDED_MARK = ".banger-seeded"  # images/files/banger-config fills an unmarked work disk from the image
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


async def empty_seed(image: Path) -> int:
    """An empty, unmarked work seed (the guest fills it from its image at first boot); returns its size."""
    scratch = image.parent / f".seed-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(mode=0o700)
    try:
        return await make_seed_image(scratch, image)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def mark_seeded(tree: Path) -> None:
    """Mark a seed tree banger unpacked itself: the guest then leaves the work disk's contents as they are."""
    (tree / SEEDED_MARK).write_bytes(b"")
