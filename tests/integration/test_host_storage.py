"""Root and work disks with the real tools: qemu-img, cp, losetup, e2fsprogs; dm reported unavailable here."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from banger.errors import HostError, InvalidArgument
from banger.host import dm, ext4, loopdev, storage
from banger.host.http import sha256_file
from banger.host.privileged import local
from banger.host.run import run

PRIV = local()

GiB = 1 << 30


@pytest.fixture
async def base(tmp_path: Path) -> Path:
    """A real ext4 root image (sparse, 128 MiB) holding a few files."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("golden\n")
    image = tmp_path / "images" / "rootfs.ext4"
    await ext4.make_from_tree(tree, image, 128 << 20, label="rootfs")
    return image


@pytest.fixture
async def seed(tmp_path: Path) -> Path:
    """A work seed as images build it: the future /root, small."""
    tree = tmp_path / "seed-tree"
    (tree / ".ssh").mkdir(parents=True)
    (tree / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA test\n")
    (tree / "hello.txt").write_text("hi\n")
    image = tmp_path / "images" / "work-seed.ext4"
    await ext4.make_from_tree(tree, image, 64 << 20, label="work")
    return image


async def losetup_j(path: Path) -> str:
    return (await run(["losetup", "-j", path])).out.strip()


async def block_count(image: Path) -> tuple[int, int]:
    out = (await run(["dumpe2fs", "-h", image])).out
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]), int(fields["Block size"])


def test_choose_cow() -> None:
    assert storage.choose_cow("qemu", dm_ok=True, reflink_ok=True) == "qcow2"
    assert storage.choose_cow("firecracker", dm_ok=True, reflink_ok=True) == "dm-snapshot"
    assert storage.choose_cow("firecracker", dm_ok=False, reflink_ok=True) == "reflink"
    assert storage.choose_cow("firecracker", dm_ok=False, reflink_ok=False) == "sparse-copy"
    with pytest.raises(InvalidArgument):
        storage.choose_cow("bhyve", dm_ok=False, reflink_ok=False)


async def test_host_probes(tmp_path: Path) -> None:
    assert await storage.probe_reflink(tmp_path) is False  # ext4 here
    assert list(tmp_path.iterdir()) == []
    assert await storage.cow_for_host("firecracker", tmp_path) == "sparse-copy"
    assert await storage.cow_for_host("qemu", tmp_path) == "qcow2"


async def test_qcow2_overlay_keeps_base_untouched(base: Path, tmp_path: Path) -> None:
    before = sha256_file(base)
    rd = await storage.make_root_disk("qcow2", base, tmp_path / "vm1", 0, priv=PRIV)
    assert (rd.format, rd.strategy, rd.path) == ("qcow2", "qcow2", tmp_path / "vm1" / "root.qcow2")
    info = json.loads((await run(["qemu-img", "info", "--output=json", rd.path])).out)
    assert info["backing-filename"] == str(base.resolve())
    assert info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == base.stat().st_size
    await run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", rd.path])
    await run(["qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 1M", rd.path])
    await run(["qemu-img", "check", rd.path])
    assert sha256_file(base) == before
    for _ in range(2):
        await storage.release_root_disk(rd, priv=PRIV)
    assert not rd.path.exists() and base.exists()


async def test_sparse_copy_is_sparse_and_equal(base: Path, tmp_path: Path) -> None:
    rd = await storage.make_root_disk("sparse-copy", base, tmp_path / "vm", 0, priv=PRIV)
    st = rd.path.stat()
    assert (rd.format, st.st_size) == ("raw", base.stat().st_size)
    assert st.st_blocks * 512 < st.st_size // 4, f"copy uses {st.st_blocks * 512} of {st.st_size} bytes"
    print(f"sparse copy: {st.st_blocks * 512 >> 10} KiB allocated for {st.st_size >> 20} MiB")
    assert sha256_file(rd.path) == sha256_file(base)
    await storage.release_root_disk(rd, priv=PRIV)
    await storage.release_root_disk(rd, priv=PRIV)
    assert not rd.path.exists()


async def test_reflink_on_ext4_fails_and_leaves_nothing(base: Path, tmp_path: Path) -> None:
    with pytest.raises(HostError, match="reflink"):
        await storage.make_root_disk("reflink", base, tmp_path / "vm", 0, priv=PRIV)
    assert list((tmp_path / "vm").iterdir()) == []


async def test_root_disk_json_round_trip(tmp_path: Path) -> None:
    rd = storage.RootDisk(
        Path("/dev/mapper/banger-x"), "raw", "dm-snapshot", ("/dev/loop1",), "banger-x", (tmp_path / "root.cow",)
    )
    assert storage.RootDisk.from_json(json.loads(json.dumps(rd.to_json()))) == rd


async def test_release_collects_every_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "a-directory"
    (blocker / "inside").mkdir(parents=True)
    doomed = tmp_path / "overlay.qcow2"
    doomed.write_bytes(b"x")
    rd = storage.RootDisk(doomed, "qcow2", "qcow2", loops=("not-a-loop",), files=(blocker, doomed))
    with pytest.raises(ExceptionGroup) as info:
        await storage.release_root_disk(rd, priv=PRIV)
    kinds = sorted(type(e).__name__ for e in info.value.exceptions)
    assert kinds == ["HostError", "InvalidArgument"]
    assert not doomed.exists(), "later steps still run after a failure"


async def test_loop_attach_detach_leaves_nothing(base: Path, tmp_path: Path) -> None:
    dev = await loopdev.attach(base, read_only=True)
    try:
        assert dev in await losetup_j(base)
        found = await loopdev.find(base)
        assert [(d.device, d.read_only) for d in found] == [(dev, True)]
        assert [d.device for d in await loopdev.list_under(tmp_path)] == [dev]
    finally:
        await loopdev.detach(dev)
    await loopdev.detach(dev)  # idempotent
    assert await losetup_j(base) == ""
    assert await loopdev.find(base) == []
    with pytest.raises(HostError, match="no such file"):
        await loopdev.attach(tmp_path / "missing.ext4", read_only=False)


async def test_dm_unavailable_here_with_clear_reason(base: Path, tmp_path: Path) -> None:
    status = await dm.available()
    assert status.ok is False
    assert "/dev/mapper/control" in status.reason
    assert await dm.list_names() == []
    await dm.remove("banger-nothing")  # idempotent even without device-mapper
    with pytest.raises(HostError, match="device-mapper snapshots are not available"):
        await storage.make_root_disk("dm-snapshot", base, tmp_path / "vm", 1 * GiB, priv=PRIV)
    # The two loop devices were attached for real before dmsetup failed: the undo stack detached them.
    assert await losetup_j(base) == ""
    assert await loopdev.list_under(tmp_path) == []
    assert list((tmp_path / "vm").iterdir()) == []


async def test_work_disk_from_seed_is_fast_and_grown(seed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "vm" / "work.ext4"
    started = time.perf_counter()
    await storage.make_work_disk(seed, dest, 8 * GiB)
    elapsed = time.perf_counter() - started
    print(f"work disk 8 GiB from a {seed.stat().st_size >> 20} MiB seed in {elapsed * 1000:.0f} ms")
    assert elapsed < 2
    count, size = await block_count(dest)
    assert count * size == 8 * GiB == dest.stat().st_size
    assert dest.stat().st_blocks * 512 < 64 << 20, "work disk must stay sparse"
    listing = await ext4.debugfs(dest, "ls -l /", "cat /.ssh/authorized_keys")
    assert "hello.txt" in listing and "ssh-ed25519 AAAA test" in listing
    await ext4.check(dest)


async def test_work_disk_smaller_than_seed_is_refused(seed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "work.ext4"
    with pytest.raises(InvalidArgument, match="smaller than the image's work seed"):
        await storage.make_work_disk(seed, dest, 1 << 20)
    assert not dest.exists()


async def test_resize_work_disk_grows_only_the_file_and_refuses_shrink(seed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "work.ext4"
    await storage.make_work_disk(seed, dest, 1 * GiB)
    before = dest.read_bytes()[:1 << 20]
    await storage.resize_work_disk(dest, 2 * GiB)
    # The guest wrote this filesystem: the host only enlarges the file; the guest grows it at boot.
    count, size = await block_count(dest)
    assert count * size == 1 * GiB and dest.stat().st_size == 2 * GiB
    assert dest.read_bytes()[:1 << 20] == before, "not one byte of the guest's filesystem was rewritten"
    await storage.resize_work_disk(dest, 2 * GiB)  # same size: no-op
    with pytest.raises(InvalidArgument, match="refusing to shrink"):
        await storage.resize_work_disk(dest, 1 * GiB)
    assert dest.stat().st_size == 2 * GiB
