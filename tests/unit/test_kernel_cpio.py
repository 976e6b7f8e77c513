"""The newc cpio writer: round trips through our reader and through GNU cpio."""

from __future__ import annotations

import gzip
import io
import stat
from pathlib import Path

import pytest

from banger.errors import IntegrityError
from banger.host.run import run
from banger.kernels.cpio import CpioWriter, read_cpio
from banger.kernels.initrd import APPLETS, MODULES_LOAD, BootModule, build_initrd


def _sample() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("bin")
    w.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("empty", b"")
    w.file("odd", b"x" * 5)
    w.symlink("bin/sh", "tool")
    w.char_device("console", 5, 1)
    w.close()
    return buf.getvalue()


def test_round_trip() -> None:
    entries = {e.name: e for e in read_cpio(_sample())}
    assert set(entries) == {"bin", "bin/tool", "empty", "odd", "bin/sh", "console"}
    assert entries["bin/tool"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(entries["bin/tool"].mode) == 0o755
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"tool"
    assert entries["console"].rdev == (5, 1) and stat.S_ISCHR(entries["console"].mode)
    assert entries["odd"].data == b"xxxxx"


async def test_gnu_cpio_reads_it(tmp_path: Path) -> None:
    listing = await run(["cpio", "-t", "--quiet"], input=_sample())
    assert listing.out.split() == ["bin", "bin/tool", "empty", "odd", "bin/sh", "console"]
    await run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=_sample(), cwd=tmp_path)
    assert (tmp_path / "bin/tool").read_text() == "#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/sh").readlink() == Path("tool")


def test_reader_rejects_garbage() -> None:
    with pytest.raises(IntegrityError):
        read_cpio(b"not a cpio archive at all" * 10)


def test_initrd_layout() -> None:
    mods = [BootModule("kernel/a/one.ko.xz", b"\x7fELF-one"), BootModule("kernel/b/two.ko", b"\x7fELF-two")]
    entries = {e.name: e for e in read_cpio(gzip.decompress(build_initrd(b"BUSYBOX", "6.1.0-1-amd64", mods)))}
    assert entries["bin/busybox"].data == b"BUSYBOX"
    assert all(entries[f"bin/{a}"].data == b"busybox" for a in APPLETS)
    assert entries["init"].data.startswith(b"#!/bin/sh") and entries["init"].mode & 0o111
    assert entries["lib/modules/6.1.0-1-amd64/kernel/a/one.ko"].data == b"\x7fELF-one"
    assert entries[MODULES_LOAD].data.decode().split() == [
        "6.1.0-1-amd64/kernel/a/one.ko", "6.1.0-1-amd64/kernel/b/two.ko"]
    assert stat.S_ISCHR(entries["dev/console"].mode)
