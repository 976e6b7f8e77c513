"""Extracting the uncompressed ELF ``vmlinux`` from an xz-compressed x86 bzImage, pure."""

from __future__ import annotations

import lzma

from banger.errors import IntegrityError
from banger.kernels import elf

XZ_MAGIC = b"\xfd7zXZ\x00"


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside ``bzimage`` (its first xz stream that decompresses to an x86-64 ELF).

    The bzImage's setup code precedes the stream and the EFI signature and padding follow it, so the
    decompressor stops at the end of the first stream and ignores what is left.
    """
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        raise IntegrityError("the kernel image holds no xz stream; only CONFIG_KERNEL_XZ bzImages are supported",
                             hint="use a catalog entry with a ready vmlinux, or import one with `banger kernel import`")
    while start >= 0:
        data = _decompress_stream(bzimage[start:])
        if data is not None and data[:4] == elf.ELF_MAGIC:
            elf.require_x86_64(data, "the kernel's vmlinux")
            return data
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise IntegrityError("no xz stream in the kernel image decompresses to an ELF vmlinux")


def _decompress_stream(blob: bytes) -> bytes | None:
    decomp = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        # The kernel's xz stream uses CRC32 and the x86 BCJ filter; both are handled by liblzma.
        return decomp.decompress(blob)
    except lzma.LZMAError:
        return None
