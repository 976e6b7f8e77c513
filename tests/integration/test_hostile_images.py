"""Crafted root filesystems cannot act on the host: real ext4 images, real bundles, the real CLI and daemon.

An image's bytes are hostile. Nothing of a bundle's or registered rootfs's tree is unpacked on the host
(the guest fills /root from its image at first boot), and a filesystem e2fsck -fn calls damaged (duplicate
names, names with '/') is refused. The crafted images are made for real: mkfs.ext4 -d of a tree, then
directory entries rewritten in the raw bytes, the way an attacker would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from banger.images.bundle import export_bundle
from banger.images.manifest import ROOTFS, ImageManifest, write_manifest
from banger.testing.artifacts import install_kernel
from banger.testing.daemon import Home

LINK = b"a" * 24
FILE = b"b" * 24


def crafted_rootfs(tmp_path: Path, victim: Path, rewrite: bytes | None) -> Path:
    """An ext4 whose /root holds a symlink to ``victim`` (a host file) and a file; ``rewrite`` renames the
    file's directory entry in the raw image (to the symlink's name: a duplicate; or to a name with '/')."""
    tree = tmp_path / "tree"
    (tree / "root").mkdir(parents=True)
    (tree / "root" / LINK.decode()).symlink_to(victim)
    (tree / "root" / FILE.decode()).write_text("pwned\n")
    (tree / "etc").mkdir()
    (tree / "etc/os-release").write_text("ID=evil\n")
    image = tmp_path / "rootfs.ext4"
    # No metadata checksums: the test is about names e2fsck checks, not checksums an attacker would redo.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum", "-b", "4096", "-d", str(tree), str(image),
                    "16M"], check=True)
    if rewrite is not None:
        data = image.read_bytes()
        assert data.count(FILE) == 1
        image.write_bytes(data.replace(FILE, rewrite))
    return image


def bundle_of(rootfs: Path, out: Path) -> Path:
    from banger.host.http import sha256_file

    image_dir = out / "img"
    image_dir.mkdir()
    (image_dir / ROOTFS).write_bytes(rootfs.read_bytes())
    write_manifest(image_dir, ImageManifest(name="evil", distro="evil", source="build",
                                            rootfs_size=rootfs.stat().st_size, rootfs_sha256=sha256_file(rootfs)))
    import asyncio

    return asyncio.run(export_bundle(image_dir, out / "evil.tar.zst"))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_text("secret\n")
    return path


def _nothing_changed(home: Home, victim: Path) -> None:
    assert victim.read_text() == "secret\n", "a host file outside banger's directories was written"
    assert json.loads(home.cli("image", "list", "--json", check=True).stdout) == []
    assert sorted(p.name for p in home.layout.images_dir.iterdir()) == []


@pytest.mark.parametrize("rewrite", [LINK, b"../../" + b"b" * 18], ids=["duplicate-name", "slash-in-name"])
def test_a_crafted_bundle_is_refused_and_touches_nothing(home: Home, tmp_path: Path, victim: Path,
                                                         rewrite: bytes) -> None:
    bundle = bundle_of(crafted_rootfs(tmp_path, victim, rewrite), tmp_path)
    home.start_daemon()
    pulled = home.cli("image", "pull", str(bundle), "--name", "evil")
    assert pulled.returncode == 8, pulled.stderr
    assert "e2fsck -fn" in pulled.stderr and "Traceback" not in pulled.stderr
    assert "Duplicate entry" in pulled.stderr or "illegal characters" in pulled.stderr
    _nothing_changed(home, victim)


def test_a_crafted_rootfs_is_refused_by_register(home: Home, tmp_path: Path, victim: Path) -> None:
    rootfs = crafted_rootfs(tmp_path, victim, LINK)
    home.start_daemon()
    registered = home.cli("image", "register", "evil", "--rootfs", str(rootfs), "--kernel-ref", "debian-6.1")
    assert registered.returncode == 8, registered.stderr
    assert "not a clean ext4 filesystem" in registered.stderr
    _nothing_changed(home, victim)


def test_a_symlink_in_an_images_root_is_never_followed_on_the_host(home: Home, tmp_path: Path, victim: Path,
                                                                   default_kernel: Path) -> None:
    bundle = bundle_of(crafted_rootfs(tmp_path, victim, None), tmp_path)
    install_kernel(home.layout, default_kernel)  # the image's kernel is there: no pull from the mirror
    home.start_daemon()
    home.cli("image", "pull", str(bundle), "--name", "linky", check=True)
    assert victim.read_text() == "secret\n"
    seed = subprocess.run(["debugfs", "-R", "ls /", str(home.layout.images_dir / "linky" / "work-seed.ext4")],
                          capture_output=True, text=True, check=True).stdout
    assert LINK.decode() not in seed and FILE.decode() not in seed, "the host unpacked nothing of the image"
