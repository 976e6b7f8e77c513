"""Layer flattening on real tarballs: whiteouts, opaque dirs, owners and modes, compression, hostile entries."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from banger.errors import IntegrityError
from banger.images.oci_layers import Escape, flatten, resolve_in_root
from banger.progress import RecordingReporter

Entry = tuple  # (name, kind, extra...) see make_layer


def make_layer(path: Path, entries: list[tuple], compress: str = "gzip") -> Path:
    """Write a layer tarball; entries are (name, type, data|target, mode, uid, gid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode, uid, gid in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1_700_000_000
            info.type = kind
            data = None
            if kind == tarfile.REGTYPE:
                data = payload
                info.size = len(data)
            elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload
            elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if compress == "gzip":
        raw = gzip.compress(raw)
    elif compress == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


def f(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0, gid: int = 0) -> tuple:
    return (name, tarfile.REGTYPE, data, mode, uid, gid)


def d(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> tuple:
    return (name, tarfile.DIRTYPE, None, mode, uid, gid)


def sym(name: str, target: str) -> tuple:
    return (name, tarfile.SYMTYPE, target, 0o777, 0, 0)


def hard(name: str, target: str) -> tuple:
    return (name, tarfile.LNKTYPE, target, 0o644, 0, 0)


def test_files_owners_modes_links_and_compressions(tmp_path: Path) -> None:
    base = make_layer(tmp_path / "l1", [
        d("etc/"), f("etc/passwd", b"root:x:0:0\n"), d("home/"), d("home/user", 0o750, 1000, 1000),
        f("home/user/notes", b"hi", 0o600, 1000, 1000), f("usr/bin/sudo", b"bin", 0o4755),
        sym("etc/mtab", "/proc/mounts"), hard("etc/passwd.lnk", "etc/passwd"),
        ("dev/null", tarfile.CHRTYPE, None, 0o666, 0, 0),
    ], "gzip")
    top = make_layer(tmp_path / "l2", [f("etc/motd", b"zstd!")], "zstd")
    plain = make_layer(tmp_path / "l3", [f("./etc/plain", b"raw")], "none")
    root, rep = tmp_path / "root", RecordingReporter()
    flatten(root, [base, top, plain], reporter=rep)
    notes = (root / "home/user/notes").lstat()
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1000, 0o600)
    assert stat.S_IMODE((root / "home/user").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "usr/bin/sudo").stat().st_mode) == 0o4755
    assert os.readlink(root / "etc/mtab") == "/proc/mounts"
    assert (root / "etc/passwd.lnk").stat().st_ino == (root / "etc/passwd").stat().st_ino
    assert (root / "etc/motd").read_bytes() == b"zstd!" and (root / "etc/plain").read_bytes() == b"raw"
    assert not (root / "dev/null").exists()
    assert any("device node /dev/null" in line for line in rep.lines)


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    lower = make_layer(tmp_path / "l1", [
        f("a/gone"), f("a/kept"), d("b/"), f("b/old1"), d("b/sub/"), f("b/sub/old2"), f("c/x"),
    ])
    upper = make_layer(tmp_path / "l2", [
        f("a/.wh.gone"), d("b/"), f("b/.wh..wh..opq", b""), f("b/new"), f("c/fresh"), f("c/.wh.fresh"),
        f(".wh.c"),
    ])
    root = tmp_path / "root"
    flatten(root, [lower, upper])
    assert sorted(os.listdir(root / "a")) == ["kept"]
    assert sorted(os.listdir(root / "b")) == ["new"]
    # A whiteout hides lower layers only: c/ is gone from below, c/fresh of this same layer stays.
    assert sorted(os.listdir(root / "c")) == ["fresh"]


@pytest.mark.parametrize("entries, what", [
    ([f("../evil")], "../evil"),
    ([f("/etc/abs")], "/etc/abs"),
    ([sym("escape", "../../../../tmp"), f("escape/pwned")], "escape/pwned"),
    ([d("x/"), sym("x/up", "../.."), f("x/up/pwned")], "x/up/pwned"),
    ([hard("stolen", "../../etc/shadow")], "stolen"),
    ([f("a/.wh..."), f("z")], "a/.wh..."),
])
def test_hostile_entries_fail_the_layer(tmp_path: Path, entries: list[tuple], what: str) -> None:
    layer = make_layer(tmp_path / "evil", entries)
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(IntegrityError, match="hostile entry") as err:
        flatten(tmp_path / "sandbox" / "root", [layer])
    assert repr(what) in str(err.value)
    assert not (tmp_path / "pwned").exists() and not list(outside.iterdir())
    assert not (tmp_path / "sandbox" / "pwned").exists()


def test_absolute_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "l", [d("usr/lib/"), sym("lib", "/usr/lib"), f("lib/libc.so", b"elf")])
    root = tmp_path / "root"
    flatten(root, [layer])
    assert (root / "usr/lib/libc.so").read_bytes() == b"elf"
    assert resolve_in_root(root, "lib/libc.so") == root / "usr/lib/libc.so"
    with pytest.raises(Escape):
        resolve_in_root(root, "usr/../../x")


def test_later_layer_replaces_symlink_instead_of_following_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host")
    l1 = make_layer(tmp_path / "l1", [sym("etc/hostname", str(secret))])
    l2 = make_layer(tmp_path / "l2", [f("etc/hostname", b"guest")])
    root = tmp_path / "root"
    flatten(root, [l1, l2])
    assert secret.read_text() == "host"
    assert not (root / "etc/hostname").is_symlink() and (root / "etc/hostname").read_bytes() == b"guest"


def test_corrupt_layer_is_an_integrity_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(IntegrityError, match="not a readable tar"):
        flatten(tmp_path / "root", [bad])


def test_deferred_directory_attributes_never_reach_through_a_replaced_path(tmp_path: Path) -> None:
    # A directory recorded early (a/b, 0777, uid 4242), then its parent replaced by a symlink to a host
    # directory that also has a `b`: the deferred chmod/chown must not land on the host's b.
    host = tmp_path / "host"
    (host / "b").mkdir(parents=True)
    os.chmod(host / "b", 0o700)
    before = (host / "b").stat()
    layer = make_layer(tmp_path / "l", [d("a/"), d("a/b/", 0o777, 4242, 4242), sym("a", str(host))])
    root = tmp_path / "root"
    flatten(root, [layer])
    after = (host / "b").stat()
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == \
        (stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid)
    assert os.readlink(root / "a") == str(host)
