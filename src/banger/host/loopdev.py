"""Loop devices through losetup: attach a file read-only or read-write, detach, find, list banger's."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.errors import HostError, InvalidArgument
from banger.host.run import run

LOOP_RE = re.compile(r"^/dev/loop[0-9]+$")


@dataclass(frozen=True)
class LoopDevice:
    """An attached loop device and the file behind it."""

    device: str
    backing_file: Path
    read_only: bool


def _check_device(device: str) -> str:
    if not LOOP_RE.match(device):
        raise InvalidArgument(f"{device!r} is not a loop device path (/dev/loopN)")
    return device


async def list_all() -> list[LoopDevice]:
    """Every attached loop device on the host."""
    result = await run(["losetup", "--json", "--list", "-O", "NAME,BACK-FILE,RO"])
    rows = json.loads(result.out or "{}").get("loopdevices", [])
    return [LoopDevice(r["name"], _backing(r.get("back-file")), _truthy(r["ro"])) for r in rows]


def _backing(value: object) -> Path:
    return Path(str(value or "").removesuffix(" (deleted)"))


def _truthy(value: object) -> bool:
    return value in (True, 1, "1")


async def find(backing_file: Path) -> list[LoopDevice]:
    """Loop devices backed by ``backing_file``."""
    want = _resolve(backing_file)
    return [d for d in await list_all() if d.backing_file == want]


async def list_under(directory: Path) -> list[LoopDevice]:
    """Loop devices whose backing file lives under ``directory`` (banger's state dir): by inode, as the
    kernel's path depends on who asks (chroots, bind mounts), or by path for a file deleted since."""
    root = _resolve(directory)
    files = file_identities(directory)
    result = await run(["losetup", "--json", "--list", "-O", "NAME,BACK-FILE,RO,BACK-INO,BACK-MAJ:MIN"])
    found = []
    for r in json.loads(result.out or "{}").get("loopdevices", []):
        dev = LoopDevice(r["name"], _backing(r.get("back-file")), _truthy(r["ro"]))
        if _identity(r) in files or dev.backing_file.is_relative_to(root):
            found.append(dev)
    return found


def _identity(row: dict[str, object]) -> tuple[int, int, int] | None:
    if not row.get("back-ino") or not row.get("back-maj:min"):
        return None
    major, minor = str(row["back-maj:min"]).split(":")
    return int(major), int(minor), int(str(row["back-ino"]))


def file_identities(directory: Path, depth: int = 4) -> set[tuple[int, int, int]]:
    """(major, minor, inode) of the regular files under ``directory``, ``depth`` levels down at most."""
    found: set[tuple[int, int, int]] = set()
    base = len(directory.parts)
    for root, dirs, files in os.walk(directory):
        if len(Path(root).parts) - base >= depth:
            dirs[:] = []
        for name in files:
            try:
                st = os.stat(os.path.join(root, name), follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    return found


async def attach(path: Path, *, read_only: bool) -> str:
    """Attach ``path`` to a free loop device and return its name (``/dev/loopN``)."""
    fd = os.open(_existing(path), (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    try:
        return await attach_fd(fd, read_only=read_only)
    finally:
        os.close(fd)


async def attach_fd(fd: int, *, read_only: bool) -> str:
    """Attach the open regular file ``fd`` to a free loop device and return its name.

    losetup opens ``/proc/self/fd/N``, the very file this descriptor is, so no path is looked up again
    between whoever checked the file and the attach.
    """
    argv = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []), f"/proc/self/fd/{fd}"]
    try:
        result = await run(argv, pass_fds=(fd,))
    except HostError as exc:
        raise HostError(
            f"could not attach a loop device: {exc.message}",
            hint="banger needs root and /dev/loop-control; look for leaked devices with `losetup -a`",
        ) from exc
    return result.out.strip()


async def backing_file(device: str) -> Path | None:
    """The file behind loop ``device`` (None when it is not attached)."""
    _check_device(device)
    for d in await list_all():
        if d.device == device:
            return d.backing_file
    return None


async def backing_identity(device: str) -> tuple[int, int, int] | None:
    """(major, minor, inode) of the file behind loop ``device``; None when it is not attached.

    An identity, not a path: the kernel's path for a backing file depends on who asks (chroots, bind
    mounts), its inode does not.
    """
    _check_device(device)
    result = await run(["losetup", "--json", "--list", "-O", "NAME,BACK-INO,BACK-MAJ:MIN"])
    for r in json.loads(result.out or "{}").get("loopdevices", []):
        if r["name"] == device:
            return _identity(r)
    return None


async def detach(device: str) -> None:
    """Detach ``device``; nothing happens if it is not attached any more."""
    _check_device(device)
    result = await run(["losetup", "--detach", device], check=False)
    if result.returncode != 0 and await _attached(device):
        raise HostError(
            f"could not detach loop device {device}: {result.err.strip()}",
            hint=f"a VMM or dm device (`dmsetup ls`) still holds it; stop that, then `losetup -d {device}`",
        )


async def _attached(device: str) -> bool:
    return any(d.device == device for d in await list_all())


def _resolve(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise HostError(f"cannot attach {path} to a loop device: no such file")
    return _resolve(path)
