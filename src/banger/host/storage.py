"""Per-VM disks: the copy-on-write view of an image's root disk, and the work disk grown from its seed.

Copy-on-write strategies, best first for each runtime (:func:`choose_cow`):

- ``qcow2``        QEMU only: a qcow2 overlay whose backing file is the raw base image.
- ``dm-snapshot``  a device-mapper snapshot over a read-only loop of the base and a sparse COW file.
- ``reflink``      ``cp --reflink=always``: instant and shared until written (btrfs, xfs).
- ``sparse-copy``  ``cp --sparse=always``: a full copy of the used blocks, the fallback that always works.

Root operations (loop and dm devices) go through :class:`~banger.host.privileged.Privileged`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from banger.errors import HostError, InvalidArgument
from banger.host import dm, ext4
from banger.host.privileged import Privileged
from banger.host.run import run

CowStrategy = Literal["dm-snapshot", "qcow2", "reflink", "sparse-copy"]
DiskFormat = Literal["raw", "qcow2"]
SECTOR = 512


@dataclass(frozen=True)
class RootDisk:
    """A VM's root disk: what the VMM opens, and everything to release when the VM is removed."""

    path: Path  # e.g. /var/lib/banger/vms/<id>/root.qcow2 or /dev/mapper/banger-<hash>
    format: DiskFormat
    strategy: CowStrategy
    loops: tuple[str, ...] = ()  # loop devices to detach, e.g. ("/dev/loop3", "/dev/loop4")
    dm_name: str | None = None  # device-mapper device to remove, e.g. "banger-1a2b3c4d5e6f"
    files: tuple[Path, ...] = field(default=())  # files to delete (overlay, copy or COW store)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, for the VM's handles.json."""
        return {
            "path": str(self.path),
            "format": self.format,
            "strategy": self.strategy,
            "loops": list(self.loops),
            "dm_name": self.dm_name,
            "files": [str(f) for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RootDisk:
        """The RootDisk that :meth:`to_json` described."""
        return cls(
            path=Path(data["path"]),
            format=data["format"],
            strategy=data["strategy"],
            loops=tuple(data.get("loops", ())),
            dm_name=data.get("dm_name"),
            files=tuple(Path(f) for f in data.get("files", ())),
        )


def choose_cow(runtime: str, *, dm_ok: bool, reflink_ok: bool) -> CowStrategy:
    """The copy-on-write strategy for ``runtime`` ("qemu" or "firecracker") on a host with these abilities."""
    if runtime == "qemu":
        return "qcow2"
    if runtime != "firecracker":
        raise InvalidArgument(f"unknown runtime {runtime!r}", hint="use firecracker or qemu")
    if dm_ok:
        return "dm-snapshot"
    return "reflink" if reflink_ok else "sparse-copy"


async def probe_reflink(directory: Path) -> bool:
    """Whether files in ``directory`` can be reflinked (``cp --reflink=always`` on a tiny file)."""
    tmp = _probe_dir(directory)
    try:
        result = await run(["cp", "--reflink=always", tmp / "a", tmp / "b"], check=False)
        return result.returncode == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _probe_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".reflink-probe-"))
    (tmp / "a").write_bytes(b"banger reflink probe\n")
    return tmp


def _file_size(path: Path, what: str) -> int:
    """Size of ``path``, or HostError naming ``what`` it should have been."""
    if not path.is_file():
        raise HostError(f"{what} {path} does not exist", hint="re-pull or rebuild the image")
    return path.stat().st_size


async def cow_for_host(runtime: str, directory: Path) -> CowStrategy:
    """Probe this host (device-mapper, reflink support in ``directory``) and choose a strategy."""
    if runtime == "qemu":
        return "qcow2"
    dm_ok = (await dm.available()).ok
    return choose_cow(runtime, dm_ok=dm_ok, reflink_ok=not dm_ok and await probe_reflink(directory))


def dm_name_for(dest_dir: Path) -> str:
    """A stable device-mapper name for the VM whose files live in ``dest_dir``."""
    return dm.PREFIX + hashlib.sha256(str(dest_dir.resolve()).encode()).hexdigest()[:12]


async def make_root_disk(
    strategy: CowStrategy,
    base: Path,
    dest_dir: Path,
    overlay_size: int,
    *,
    priv: Privileged,
) -> RootDisk:
    """Create a writable copy-on-write view of ``base`` in ``dest_dir`` (nothing is left behind on failure).

    ``overlay_size`` is the capacity of the dm-snapshot COW store; the other strategies grow as needed.
    """
    base_size = _file_size(base, "root disk base image")
    os.makedirs(dest_dir, exist_ok=True)
    if strategy == "qcow2":
        return await _make_qcow2(_absolute(base), dest_dir / "root.qcow2")
    if strategy in ("reflink", "sparse-copy"):
        return await _make_copy(strategy, base, dest_dir / "root.ext4")
    if strategy == "dm-snapshot":
        return await _make_dm(base, base_size, dest_dir, overlay_size, priv)
    raise InvalidArgument(f"unknown copy-on-write strategy {strategy!r}")


async def _make_qcow2(base: Path, dest: Path) -> RootDisk:
    await make_overlay(base, "raw", dest)
    return RootDisk(dest, "qcow2", "qcow2", files=(dest,))


async def make_overlay(base: Path, base_format: DiskFormat, dest: Path) -> None:
    """A qcow2 overlay ``dest`` over ``base`` (absolute path recorded); nothing is left on failure."""
    async with contextlib.AsyncExitStack() as undo:
        undo.callback(dest.unlink, missing_ok=True)
        await run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", _absolute(base), dest])
        undo.pop_all()


async def _make_copy(strategy: CowStrategy, base: Path, dest: Path) -> RootDisk:
    flag = "--reflink=always" if strategy == "reflink" else "--sparse=always"
    async with contextlib.AsyncExitStack() as undo:
        undo.callback(dest.unlink, missing_ok=True)
        await run(["cp", flag, base, dest])
        undo.pop_all()
    return RootDisk(dest, "raw", strategy, files=(dest,))


async def _make_dm(base: Path, base_size: int, dest_dir: Path, overlay_size: int, priv: Privileged) -> RootDisk:
    cow, name = dest_dir / "root.cow", dm_name_for(dest_dir)
    async with contextlib.AsyncExitStack() as undo:
        base_loop = await priv.attach_loop(base, True)
        undo.push_async_callback(priv.detach_loop, base_loop)
        undo.callback(cow.unlink, missing_ok=True)
        _sparse_file(cow, overlay_size)
        cow_loop = await priv.attach_loop(cow, False)
        undo.push_async_callback(priv.detach_loop, cow_loop)
        path = await priv.dm_create_snapshot(name, base_loop, cow_loop, base_size // SECTOR)
        undo.pop_all()
    return RootDisk(path, "raw", "dm-snapshot", loops=(base_loop, cow_loop), dm_name=name, files=(cow,))


def _sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


async def release_root_disk(rd: RootDisk, *, priv: Privileged) -> None:
    """Remove the dm device, detach the loops and delete the files of ``rd``; safe to call again.

    Every step is attempted; all failures are raised together as an ExceptionGroup.
    """
    errors: list[Exception] = []

    async def attempt(step: Any, *args: Any) -> None:
        try:
            await step(*args)
        except Exception as exc:  # collected, re-raised below
            errors.append(exc)

    if rd.dm_name:
        await attempt(priv.dm_remove, rd.dm_name)
    for loop in reversed(rd.loops):
        await attempt(priv.detach_loop, loop)
    errors.extend(_unlink_all(rd.files))
    if errors:
        raise ExceptionGroup(f"releasing root disk {rd.path} left {len(errors)} problem(s)", errors)


def _unlink_all(paths: tuple[Path, ...]) -> list[Exception]:
    errors: list[Exception] = []
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            errors.append(HostError(f"could not delete {path}: {exc}"))
    return errors


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


async def make_work_disk(seed: Path, dest: Path, size: int) -> None:
    """Create work disk ``dest`` of ``size`` bytes from the image's ext4 work ``seed``.

    A sparse copy of the small seed, grown with resize2fs: milliseconds, whatever ``size`` is.
    """
    seed_size = _file_size(seed, "work disk seed")
    if size < seed_size:
        raise InvalidArgument(
            f"work disk size {size} bytes is smaller than the image's work seed ({seed_size} bytes)",
            hint="ask for a bigger work disk (e.g. --disk 8G)",
        )
    os.makedirs(dest.parent, exist_ok=True)
    async with contextlib.AsyncExitStack() as undo:
        undo.callback(dest.unlink, missing_ok=True)
        await run(["cp", "--sparse=always", seed, dest])
        await _grow_fresh(dest, seed_size, size)
        undo.pop_all()


async def _grow_fresh(image: Path, current: int, size: int) -> None:
    """Grow a never-mounted filesystem; resize2fs skips the fsck it would otherwise demand."""
    if size == current:
        return
    os.truncate(image, size)
    result = await run(["resize2fs", image], check=False)
    if result.returncode != 0:  # e.g. the seed was mounted once: resize2fs wants a fresh e2fsck -f
        await ext4.grow(image, size)


async def resize_work_disk(path: Path, new_size: int) -> None:
    """Grow work disk file ``path`` to ``new_size`` bytes; shrinking is refused.

    Only the file grows: the guest wrote this filesystem, so the host never runs e2fsck or resize2fs on it;
    the guest grows it online at its next boot (``banger-config``).
    """
    current = _file_size(path, "work disk")
    if new_size < current:
        raise InvalidArgument(
            f"refusing to shrink work disk {path} from {current} to {new_size} bytes",
            hint="work disks can only grow; choose a size of at least the current one",
        )
    if new_size > current:
        os.truncate(path, new_size)
