"""The local image store and small bundles, on real files and real e2fsprogs (no golden build needed)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from banger.errors import AlreadyExists, IntegrityError, InvalidArgument, NotFound
from banger.host.ext4 import debugfs, make_from_tree
from banger.host.http import sha256_file
from banger.images import local
from banger.images.bundle import export_bundle, import_bundle
from banger.images.manifest import ROOTFS, WORK_SEED


@pytest.fixture
async def small_rootfs(tmp_path: Path) -> Path:
    """A tiny real ext4 rootfs whose /root holds a .bashrc."""
    tree = tmp_path / "tree"
    (tree / "root").mkdir(parents=True, mode=0o700)
    (tree / "root/.bashrc").write_text("echo hi\n")
    (tree / "etc").mkdir()
    (tree / "etc/os-release").write_text("ID=test\n")
    image = tmp_path / "rootfs.ext4"
    await make_from_tree(tree, image, 64 << 20)
    return image


async def test_register_list_get_remove(tmp_path: Path, small_rootfs: Path) -> None:
    images = tmp_path / "images"
    manifest = await local.register(images, "tiny", small_rootfs, kernel_ref="debian-6.1")
    assert manifest.source == "register" and manifest.rootfs_sha256 == sha256_file(small_rootfs)
    assert [m.name for m in local.list_images(images)] == ["tiny"]
    seed = await debugfs(images / "tiny" / WORK_SEED, "ls /")
    assert ".bashrc" not in seed and ".banger-seeded" not in seed, "nothing of it is unpacked on the host"
    assert local.get_image(images, "tiny") == manifest
    with pytest.raises(AlreadyExists):
        await local.register(images, "tiny", small_rootfs)
    await local.remove_image(images, "tiny")
    assert local.list_images(images) == [] and list(images.iterdir()) == []
    with pytest.raises(NotFound):
        local.get_image(images, "tiny")


async def test_register_refuses_bad_input_and_leaves_nothing(tmp_path: Path, small_rootfs: Path) -> None:
    images = tmp_path / "images"
    with pytest.raises(InvalidArgument):
        await local.register(images, "../escape", small_rootfs)
    not_ext4 = tmp_path / "junk.img"
    not_ext4.write_bytes(b"\0" * 4096)
    with pytest.raises(InvalidArgument, match="not an ext4"):
        await local.register(images, "junk", not_ext4)
    with pytest.raises(InvalidArgument, match="go together"):
        await local.register(images, "half", small_rootfs, kernel=small_rootfs)
    assert not images.exists() or list(images.iterdir()) == []


async def test_staging_commits_on_success_and_vanishes_on_failure(tmp_path: Path) -> None:
    async with local.staging(tmp_path / "ok") as stage:
        (stage / "f").write_text("x")
    assert (tmp_path / "ok/f").read_text() == "x"
    with pytest.raises(RuntimeError):
        async with local.staging(tmp_path / "bad") as stage:
            (stage / "f").write_text("x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


async def test_small_bundle_round_trip_leaves_the_seed_to_the_guest(tmp_path: Path, small_rootfs: Path) -> None:
    images = tmp_path / "images"
    await local.register(images, "tiny", small_rootfs)
    bundle = await export_bundle(images / "tiny", tmp_path)
    assert bundle.name == f"tiny-{sha256_file(bundle)[:12]}.tar.zst"
    again = await export_bundle(images / "tiny", tmp_path / "same.tar.zst")
    assert sha256_file(again) == sha256_file(bundle)
    manifest = await import_bundle(bundle, images / "copy", sha256=sha256_file(bundle))
    assert manifest.source == "bundle" and manifest.name == "copy"
    assert sha256_file(images / "copy" / ROOTFS) == sha256_file(small_rootfs)
    seed = await debugfs(images / "copy" / WORK_SEED, "ls /")
    assert ".bashrc" not in seed and ".banger-seeded" not in seed, "the guest fills /root at first boot"


def _evil_bundle(path: Path, members: dict[str, bytes], kind: bytes = tarfile.REGTYPE) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


@pytest.mark.parametrize(
    "members",
    [
        {"../manifest.json": b"{}", "rootfs.ext4": b""},
        {"manifest.json": b"{}", "rootfs.ext4": b"", "extra": b""},
        {"manifest.json": b'{"name": "x"}'},
    ],
)
async def test_unexpected_bundle_members_are_refused(tmp_path: Path, members: dict[str, bytes]) -> None:
    bundle = _evil_bundle(tmp_path / "evil.tar.zst", members)
    with pytest.raises(IntegrityError):
        await import_bundle(bundle, tmp_path / "images" / "evil")
    assert not (tmp_path / "images").exists() or list((tmp_path / "images").iterdir()) == []


async def test_symlink_members_are_refused(tmp_path: Path) -> None:
    bundle = _evil_bundle(tmp_path / "link.tar.zst", {"rootfs.ext4": b""}, kind=tarfile.SYMTYPE)
    with pytest.raises(IntegrityError, match="unexpected member"):
        await import_bundle(bundle, tmp_path / "images" / "link")


async def test_urls_need_a_checksum(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="sha256"):
        await import_bundle("http://127.0.0.1:9/x.tar.zst", tmp_path / "x", catalog={})
