"""Reading .deb packages in pure Python: the ar container and its data.tar.{xz,zst,gz} payload."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from banger import archive
from banger.errors import IntegrityError

AR_MAGIC = b"!<arch>\n"
_HEADER = 60


@dataclass(frozen=True)
class ArMember:
    name: str  # "data.tar.xz"
    offset: int  # where its bytes start in the file
    size: int


def ar_members(deb: Path) -> list[ArMember]:
    """The members of an ar archive, in order."""
    out = []
    with open(deb, "rb") as f:
        if f.read(8) != AR_MAGIC:
            raise IntegrityError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(_HEADER):
            if len(header) < _HEADER or header[58:60] != b"`\n":
                raise IntegrityError(f"{deb}: truncated or corrupt ar member header")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            out.append(ArMember(name, f.tell(), size))
            f.seek(size + (size & 1), io.SEEK_CUR)
    return out


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes of ``f`` starting at its current position."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.left)
        data = self.f.read(n)
        buf[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _payload(deb: Path, prefix: str) -> ArMember:
    for m in ar_members(deb):
        if m.name.startswith(prefix):
            return m
    raise IntegrityError(f"{deb} has no {prefix}* member")


def _open_tar(f: BinaryIO, member: ArMember) -> tarfile.TarFile:
    f.seek(member.offset)
    raw = io.BufferedReader(_Window(f, member.size), 1 << 20)
    if member.name.endswith(".zst"):
        return tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw), mode="r|")
    mode = {".xz": "r|xz", ".gz": "r|gz", ".tar": "r|"}.get(Path(member.name).suffix)
    if mode is None:
        raise IntegrityError(f"unsupported .deb payload {member.name}")
    return tarfile.open(fileobj=raw, mode=mode)  # type: ignore[call-overload, no-any-return]


def clean_name(name: str) -> str:
    """A tar member name without its leading ``./`` or ``/``."""
    return name.removeprefix("./").lstrip("/")


def iter_data(deb: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Walk the members of the package's data.tar once, streaming (no random access)."""
    member = _payload(deb, "data.tar")
    with open(deb, "rb") as f, _open_tar(f, member) as tar:
        for info in tar:
            yield tar, info


def extract(deb: Path, dest: Path, want: Callable[[str], bool]) -> list[str]:
    """Extract the data members whose cleaned name satisfies ``want`` into ``dest``; return those names.

    Through :mod:`banger.archive`: names are validated, nothing is written through a symlink, no device
    nodes, no setuid bits (the same on every Python, unlike ``tarfile``'s ``filter=``).
    """
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for tar, info in iter_data(deb):
        try:
            name = archive.entry_name(info)
        except ValueError:
            raise IntegrityError(f"{deb.name} has a member with an unsafe name: {info.name!r}") from None
        if not name or not want(name):
            continue
        try:
            written = archive.extract_member(tar, info, dest, name)
        except archive.Escape:
            raise IntegrityError(f"{deb.name}: member {info.name!r} resolves outside the package tree") from None
        if written:
            done.append(name)
    return done


def read_members(deb: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """The contents of the regular files in the data tar whose cleaned name satisfies ``want``."""
    out = {}
    for tar, info in iter_data(deb):
        name = clean_name(info.name)
        if info.isfile() and want(name):
            fobj = tar.extractfile(info)
            if fobj is not None:
                out[name] = fobj.read()
    return out
