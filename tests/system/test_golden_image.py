"""The golden image, inspected with debugfs on the real build: files, modes, units, identity, cache reuse."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from banger.config import Config
from banger.host.ext4 import debugfs
from banger.host.http import sha256_file
from banger.host.run import run
from banger.images.golden import FILES_DIR, build_golden
from banger.images.manifest import ROOTFS, WORK_SEED, read_manifest
from banger.progress import RecordingReporter


def _stat_fields(text: str) -> tuple[int, int, int]:
    mode = re.search(r"Mode:\s+(\d+)", text)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    assert mode and owner, text
    return int(mode.group(1), 8), int(owner.group(1)), int(owner.group(2))


async def _cat(image: Path, path: str) -> str:
    return (await run(["debugfs", "-R", f"cat {path}", image])).out


async def _names(image: Path, path: str) -> set[str]:
    out = await debugfs(image, f"ls -p {path}")
    return {f.split("/")[5] for f in out.splitlines() if f.startswith("/")} - {".", ".."}


async def test_sshd_dropin_is_root_owned_and_locks_out_passwords(golden_image: Path) -> None:
    rootfs = golden_image / ROOTFS
    mode, uid, gid = _stat_fields(await debugfs(rootfs, "stat /etc/ssh/sshd_config.d/banger.conf"))
    assert (mode & 0o7777, uid, gid) == (0o644, 0, 0)
    conf = await _cat(rootfs, "/etc/ssh/sshd_config.d/banger.conf")
    for line in ("PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no"):
        assert line in conf


async def test_fstab_mounts_the_work_disk_at_root(golden_image: Path) -> None:
    fstab = await _cat(golden_image / ROOTFS, "/etc/fstab")
    assert "/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=300s 0 2" in fstab
    assert "/dev/vda / ext4 defaults,errors=remount-ro 0 1" in fstab


async def test_mise_is_installed_and_runs(golden_image: Path, tmp_path: Path) -> None:
    rootfs = golden_image / ROOTFS
    mode, uid, _ = _stat_fields(await debugfs(rootfs, "stat /usr/local/bin/mise"))
    assert (mode & 0o7777, uid) == (0o755, 0)
    await debugfs(rootfs, f"dump -p /usr/local/bin/mise {tmp_path / 'mise'}")
    result = await run([tmp_path / "mise", "--version"], env={"MISE_YES": "1", "HOME": str(tmp_path)})
    assert result.out.startswith("2026.9.15")


async def test_per_vm_identity_is_absent(golden_image: Path) -> None:
    rootfs = golden_image / ROOTFS
    assert not {n for n in await _names(rootfs, "/etc/ssh") if n.startswith("ssh_host_")}
    etc = await _names(rootfs, "/etc")
    assert "hostname" not in etc and "resolv.conf" not in etc
    assert (await _cat(rootfs, "/etc/machine-id")).strip() == ""


async def test_root_and_lib_modules_are_empty_mountpoints(golden_image: Path) -> None:
    rootfs = golden_image / ROOTFS
    assert await _names(rootfs, "/root") == set()
    assert await _names(rootfs, "/usr/lib/modules") == set()
    mode, _, _ = _stat_fields(await debugfs(rootfs, "stat /root"))
    assert mode & 0o7777 == 0o700


async def test_work_seed_holds_roots_home(golden_image: Path) -> None:
    seed = golden_image / WORK_SEED
    assert {".bashrc", ".profile", ".ssh"} <= await _names(seed, "/")
    mode, uid, _ = _stat_fields(await debugfs(seed, "stat /"))
    assert (mode & 0o7777, uid) == (0o700, 0)


async def test_units_are_enabled_and_masked(golden_image: Path) -> None:
    rootfs = golden_image / ROOTFS
    wants = await _names(rootfs, "/etc/systemd/system/multi-user.target.wants")
    assert {"banger-network.service", "ssh.service"} <= wants and "docker.service" not in wants
    assert "docker.socket" in await _names(rootfs, "/etc/systemd/system/sockets.target.wants")
    assert "serial-getty@ttyS0.service" in await _names(rootfs, "/etc/systemd/system/getty.target.wants")
    assert "banger-config.service" in await _names(rootfs, "/etc/systemd/system/multi-user.target.wants")
    assert await _cat(rootfs, "/usr/local/sbin/banger-config") == (FILES_DIR / "banger-config").read_text()
    masked = await debugfs(rootfs, "stat /etc/systemd/system/systemd-networkd-wait-online.service")
    assert '"/dev/null"' in masked
    script = await _cat(rootfs, "/usr/local/sbin/banger-network")
    assert script == (FILES_DIR / "banger-network").read_text()


async def test_manifest_describes_the_files(golden_image: Path) -> None:
    manifest = read_manifest(golden_image)
    assert (manifest.name, manifest.source, manifest.kernel_ref) == ("debian-bookworm", "build", "debian-6.1")
    assert manifest.rootfs_size == (golden_image / ROOTFS).stat().st_size
    assert manifest.work_seed_size == (golden_image / WORK_SEED).stat().st_size
    assert manifest.rootfs_sha256 == sha256_file(golden_image / ROOTFS)
    assert "docker.io" in manifest.extra["installed"] and "openssh-server" in manifest.extra["packages"]
    # Sparse: far fewer blocks on disk than the apparent size.
    assert os.stat(golden_image / ROOTFS).st_blocks * 512 < manifest.rootfs_size


async def test_unchanged_rebuild_reuses_the_cache(golden_image: Path, tmp_path: Path) -> None:
    cache = Path(os.environ.get("BANGER_TEST_CACHE", "/var/tmp/banger-test-cache")) / "golden-build"
    reporter = RecordingReporter()
    started = time.monotonic()
    manifest = await build_golden(
        tmp_path / "again", name="again", mirror=Config().debian_mirror, cache_dir=cache, reporter=reporter
    )
    assert time.monotonic() - started < 60
    assert any("reusing cached golden build" in line for line in reporter.lines)
    assert not any("mmdebstrap" in stage for stage in reporter.stages)
    assert manifest.name == "again"
    assert manifest.rootfs_sha256 == read_manifest(golden_image).rootfs_sha256
    assert sha256_file(tmp_path / "again" / ROOTFS) == manifest.rootfs_sha256


NETNS_SCRIPT = r"""
set -eu
mount --make-rprivate /
mount -t sysfs sysfs /sys
mount --bind "$1" /proc/cmdline
mount -t tmpfs banger-test /etc
printf '127.0.0.1\tlocalhost\n' > /etc/hosts
ip link set lo up
ip link add eth0 type veth peer name peer0
ip link set peer0 up
sh "$2"
sh "$2"
ip -4 -o addr show dev eth0
ip -4 route show
echo ---
cat /etc/resolv.conf /etc/hosts
"""


async def test_banger_network_applies_the_command_line_idempotently(tmp_path: Path) -> None:
    # Runs the guest's banger-network for real, twice, in a private network + mount namespace, with a
    # fake /proc/cmdline and a scratch /etc (nothing of the host's network or /etc is touched).
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        "console=ttyS0 ip=172.30.0.7::172.30.0.1:255.255.255.0::: systemd.hostname=box1 "
        "banger.dns=172.30.0.1,9.9.9.9 root=/dev/vda rw\n"
    )
    script = FILES_DIR / "banger-network"
    result = await run(["unshare", "--net", "--mount", "sh", "-c", NETNS_SCRIPT, "sh", cmdline, script])
    network, files = result.out.split("---\n")
    assert "inet 172.30.0.7/24" in network and network.count("inet ") == 1
    assert "default via 172.30.0.1 dev eth0 onlink" in network
    assert files.count("nameserver") == 2 and "nameserver 172.30.0.1\nnameserver 9.9.9.9\n" in files
    assert files.count("127.0.1.1\tbox1") == 1 and "127.0.0.1\tlocalhost" in files


async def test_cancelled_build_leaves_no_tree_mount_or_process(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    task = asyncio.create_task(
        build_golden(
            tmp_path / "dest", name="x", mirror=Config().debian_mirror, cache_dir=tmp_path / "cache", reporter=reporter
        )
    )
    while not any("mmdebstrap" in stage for stage in reporter.stages):
        assert not task.done(), task
        await asyncio.sleep(0.2)
    await asyncio.sleep(12)  # well into apt/dpkg, with /dev and /sys mounted in the tree
    task.cancel()
    cancelled = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in (tmp_path / "cache" / "golden").iterdir()] == []
    assert time.monotonic() - cancelled < 15
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    await asyncio.sleep(2)
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path).encode() in _read(p)]
    assert leftovers == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
