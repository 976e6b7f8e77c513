"""Careful tar extraction (banger.archive) through a real, hand-made .deb: the same on every Python 3.11."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from banger.errors import IntegrityError
from banger.kernels import deb


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_deb(path: Path, entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for e in entries:
            info, data = e if isinstance(e, tuple) else (e, b"")
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", buf.getvalue())]))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", mode: int = 0o644,
           link: str = "") -> tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    return (info, data) if kind == tarfile.REGTYPE else info


def test_a_plain_package_unpacks_with_modes_links_and_no_specials(tmp_path: Path) -> None:
    pkg = make_deb(tmp_path / "p.deb", [
        member("./boot/", tarfile.DIRTYPE, mode=0o755),
        member("./boot/vmlinuz", data=b"kernel", mode=0o644),
        member("./usr/bin/su", data=b"suid", mode=0o4755),
        member("./lib", tarfile.SYMTYPE, link="usr/lib"),
        member("./usr/lib/libx.so", data=b"elf"),
        member("./usr/lib/libx.so.1", tarfile.LNKTYPE, link="./usr/lib/libx.so"),
        member("./dev/null", tarfile.CHRTYPE),
    ])
    dest = tmp_path / "tree"
    done = deb.extract(pkg, dest, lambda n: True)
    assert (dest / "boot/vmlinuz").read_bytes() == b"kernel"
    assert stat.S_IMODE((dest / "usr/bin/su").stat().st_mode) == 0o755, "setuid is dropped"
    assert os.readlink(dest / "lib") == "usr/lib"
    assert (dest / "usr/lib/libx.so.1").stat().st_ino == (dest / "usr/lib/libx.so").stat().st_ino
    assert not (dest / "dev/null").exists() and "dev/null" not in done


@pytest.mark.parametrize("entries", [
    [member("../outside", data=b"x")],
    [member("/abs", data=b"x")],
    [member("esc", tarfile.SYMTYPE, link="/"), member("esc/../../outside", data=b"x")],
    [member("up", tarfile.SYMTYPE, link="../../.."), member("up/outside", data=b"x")],
    [member("stolen", tarfile.LNKTYPE, link="../../etc/passwd")],
])
def test_hostile_members_are_refused_and_write_nothing_outside(tmp_path: Path, entries: list) -> None:
    pkg = make_deb(tmp_path / "evil.deb", entries)
    box = tmp_path / "box" / "tree"
    with pytest.raises(IntegrityError):
        deb.extract(pkg, box, lambda n: True)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "box" / "outside").exists()
    assert not list(Path("/").glob("outside"))


def test_symlink_inside_the_tree_cannot_redirect_a_later_write_to_the_host(tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    pkg = make_deb(tmp_path / "p.deb", [member("etc", tarfile.SYMTYPE, link=str(host)),
                                        member("etc/passwd", data=b"pwned")])
    dest = tmp_path / "tree"
    deb.extract(pkg, dest, lambda n: True)
    assert not list(host.iterdir()), "the absolute symlink resolved inside the tree, not on the host"
    assert (dest / host.relative_to("/") / "passwd").read_bytes() == b"pwned"
