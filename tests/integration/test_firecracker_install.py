"""`scripts/setup.sh --firecracker`'s installer against release tarballs served on loopback: the official
layout with the pinned binary installs; a tampered binary or a wrong layout installs nothing."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from banger.host import firecracker_release as release
from banger.testing.firecracker import firecracker_binary, jailer_binary


def _tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))


def _install(url: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "banger.host.firecracker_release", "--url", url, "--dest", str(dest)],
                          capture_output=True, text=True, timeout=120)


def test_the_official_layout_with_the_pinned_binary_installs(served: tuple[Path, str], tmp_path: Path,
                                                             banger_test_cache: Path) -> None:
    root, base = served
    binary = firecracker_binary(banger_test_cache).read_bytes()
    jailer = jailer_binary(banger_test_cache).read_bytes()
    _tarball(root / "fc.tgz", {release.MEMBER: binary, release.JAILER_MEMBER: jailer,
                               f"release-v{release.VERSION}-x86_64/seccompiler-bin": b"other"})
    dest = tmp_path / "bin/firecracker"
    proc = _install(f"{base}/fc.tgz", dest)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == binary and dest.stat().st_mode & 0o777 == 0o755
    assert (dest.parent / "jailer").read_bytes() == jailer and (dest.parent / "jailer").stat().st_mode & 0o777 == 0o755
    assert subprocess.run([str(dest), "--version"], capture_output=True, text=True).stdout.startswith(
        f"Firecracker v{release.VERSION}")
    assert subprocess.run([str(dest.parent / "jailer"), "--version"], capture_output=True,
                          text=True).stdout.startswith(f"Jailer v{release.VERSION}")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["firecracker", "jailer"]  # no staging left


@pytest.mark.parametrize("case", ["tampered", "tampered jailer", "no jailer", "wrong layout", "not a tarball",
                                  "missing"])
def test_anything_else_installs_nothing(served: tuple[Path, str], tmp_path: Path, case: str,
                                        banger_test_cache: Path) -> None:
    root, base = served
    binary = firecracker_binary(banger_test_cache).read_bytes()
    if case == "tampered":
        _tarball(root / "fc.tgz", {release.MEMBER: b"#!/bin/sh\necho owned\n"})
    elif case == "tampered jailer":  # a good firecracker is not installed beside a bad jailer either
        _tarball(root / "fc.tgz", {release.MEMBER: binary, release.JAILER_MEMBER: b"#!/bin/sh\necho owned\n"})
    elif case == "no jailer":
        _tarball(root / "fc.tgz", {release.MEMBER: binary})
    elif case == "wrong layout":
        _tarball(root / "fc.tgz", {"firecracker": b"x"})
    elif case == "not a tarball":
        (root / "fc.tgz").write_bytes(b"<html>not found</html>")
    dest = tmp_path / "bin/firecracker"
    proc = _install(f"{base}/fc.tgz", dest)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("firecracker: "), proc.stderr
    if case.startswith("tampered"):
        assert "not the pinned" in proc.stderr
    assert not dest.exists() and list(dest.parent.iterdir()) == []
