"""The "newc" cpio format (what the kernel unpacks as an initramfs): a writer and a reader, pure."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

from banger.errors import IntegrityError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_FIELDS = 13


@dataclass(frozen=True)
class Entry:
    name: str  # "bin/busybox" (no leading slash)
    mode: int  # st_mode including the file type bits
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node
    uid: int = 0
    gid: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Writes entries to ``out`` in newc format; call :meth:`close` to add the trailer."""

    def __init__(self, out: BinaryIO, *, mtime: int = 0) -> None:
        self.out, self.mtime, self.ino, self.offset = out, mtime, 0, 0

    def _emit(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.offset += len(chunk)

    def add(self, entry: Entry) -> None:
        """Append one entry (a directory, regular file, symlink or device node)."""
        self.ino += 1
        name = entry.name.encode() + b"\0"
        values = (self.ino, entry.mode, entry.uid, entry.gid, 2 if entry.is_dir else 1, self.mtime,
                  len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
        header = MAGIC + b"".join(b"%08X" % v for v in values)
        self._emit(header + name + _pad(len(header) + len(name)))
        self._emit(entry.data + _pad(len(entry.data)))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self.add(Entry(name, stat.S_IFDIR | mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(name, stat.S_IFREG | mode, data))

    def symlink(self, name: str, target: str) -> None:
        self.add(Entry(name, stat.S_IFLNK | 0o777, target.encode()))

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(Entry(name, stat.S_IFCHR | mode, rdev=(major, minor)))

    def close(self) -> None:
        """Write the trailer entry (the kernel stops reading there)."""
        self.add(Entry(TRAILER, 0))


def read_cpio(data: bytes) -> list[Entry]:
    """Parse a newc archive (up to its trailer) back into entries."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != MAGIC:
            raise IntegrityError(f"not a newc cpio archive at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(_FIELDS)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == TRAILER:
            return entries
        entries.append(Entry(name, fields[1], data[body : body + filesize], (fields[9], fields[10]),
                             fields[2], fields[3]))
        pos = body + filesize + (-filesize % 4)
