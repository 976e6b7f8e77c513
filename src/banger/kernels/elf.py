"""Just enough ELF64 parsing: the header's class/machine and named section contents, pure."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from banger.errors import IntegrityError

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62


@dataclass(frozen=True)
class ElfHeader:
    is_64: bool
    little_endian: bool
    machine: int  # 62 = x86-64
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int


def header(data: bytes, what: str = "file") -> ElfHeader:
    """The ELF header of ``data``; IntegrityError if it is not a 64-bit little-endian ELF."""
    if len(data) < 64 or data[:4] != ELF_MAGIC:
        raise IntegrityError(f"{what} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise IntegrityError(f"{what} is not a 64-bit little-endian ELF")
    machine, = struct.unpack_from("<H", data, 18)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    return ElfHeader(True, True, machine, shoff, shentsize, shnum, shstrndx)


def require_x86_64(data: bytes, what: str = "file") -> None:
    """IntegrityError unless ``data`` is an x86-64 ELF."""
    h = header(data, what)
    if h.machine != EM_X86_64:
        raise IntegrityError(f"{what} is an ELF for machine {h.machine}, not x86-64 ({EM_X86_64})")


def sections(data: bytes, what: str = "file") -> dict[str, bytes]:
    """Every named section's raw bytes (NOBITS sections map to empty bytes)."""
    h = header(data, what)
    if h.shoff == 0 or h.shnum == 0:
        return {}
    if h.shentsize < 64 or h.shoff + h.shnum * h.shentsize > len(data):
        raise IntegrityError(f"{what}: section header table lies outside the file")
    rows = [struct.unpack_from("<IIQQQQ", data, h.shoff + i * h.shentsize) for i in range(h.shnum)]
    names_off, names_size = rows[h.shstrndx][4], rows[h.shstrndx][5]
    names = data[names_off : names_off + names_size]
    out = {}
    for name_idx, sh_type, _flags, _addr, offset, size in rows:
        name = names[name_idx : names.index(b"\0", name_idx)].decode("ascii", "replace")
        out[name] = b"" if sh_type == 8 else data[offset : offset + size]
    return out
