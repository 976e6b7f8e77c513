"""Firecracker under the real jailer v1.12.1, as root, up to InstanceStart (KVM cannot run guests here).

The process must run as the chosen user inside its chroot under ``<state>/jail``, answer on the host path of
the jail's API socket, and leave no jail directory, process or device node after a kill, a stop or a failure.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.daemon import sweep
from banger.errors import ConfigError, HostError
from banger.host import jail as jails
from banger.host.firecracker import FirecrackerVMM, Jail
from banger.host.privileged import LocalPrivileged
from banger.host.vmm import Disk, Handle, LaunchSpec
from banger.paths import Layout
from banger.testing.firecracker import firecracker_binary, jailer_binary, sparse, tiny_elf
from banger.testing.netns import NetNS

NOBODY = 65534


@pytest.fixture(scope="module")
def binaries(banger_test_cache: Path) -> tuple[str, str]:
    return str(firecracker_binary(banger_test_cache)), str(jailer_binary(banger_test_cache))


def jailed(binaries: tuple[str, str], state: Path, uid: int = 0, gid: int = 0) -> FirecrackerVMM:
    firecracker, jailer = binaries
    return FirecrackerVMM(firecracker, jail=Jail(jailer, jails.jail_base(state), uid, gid, LocalPrivileged()))


def spec_for(state: Path, **changes: object) -> LaunchSpec:
    (state / "images").mkdir(parents=True, exist_ok=True)
    base: dict[str, object] = dict(
        vm_id="0123456789ab", name="j1", kernel=tiny_elf(state / "images" / "vmlinux"), initrd=None,
        cmdline="console=ttyS0 reboot=k panic=1", disks=(), tap=None, mac=None, vcpu=1, memory_mib=128,
        vm_dir=state / "vms" / "0123456789ab")
    base.update(changes)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def status_ids(pid: int) -> tuple[list[str], list[str]]:
    lines = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return lines["Uid"].split(), lines["Gid"].split()


def pids_in(root: Path) -> list[int]:
    return sorted(jails.jailed_pids(root.parent.parent.parent))


def assert_no_jail_left(state: Path) -> None:
    base = jails.jail_base(state) / jails.EXEC_NAME
    assert not base.exists() or list(base.iterdir()) == []


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    # Short: the jail's API socket path must fit a Unix socket address.
    path = Path(f"/tmp/bj-{os.getpid()}-{tmp_path.name[-6:]}")
    path.mkdir()
    yield path
    subprocess.run(["rm", "-rf", str(path), str(jails.jail_base(path))], check=False)


async def test_jailed_firecracker_runs_as_its_user_in_the_chroot(binaries: tuple[str, str], state: Path) -> None:
    os.chown(state, NOBODY, NOBODY)  # the jail's user must be able to reach its chroot
    os.chmod(state, 0o755)
    images = state / "images"
    images.mkdir()
    rootfs, work = sparse(images / "rootfs.ext4"), sparse(state / "work.ext4")
    os.chown(work, NOBODY, NOBODY)
    initrd = images / "initrd.img"
    initrd.write_bytes(b"\0" * 4096)
    with NetNS() as ns:
        ns.run(["ip", "tuntap", "add", "dev", "tap-j0", "mode", "tap", "user", str(NOBODY)])
        spec = spec_for(state, initrd=initrd, disks=(Disk(rootfs, read_only=True), Disk(work)), tap="tap-j0",
                        vsock_cid=7, netns=ns.name)
        vmm = jailed(binaries, state, NOBODY, NOBODY)
        handle = await vmm.launch(spec)
        root = jails.JailPaths(jails.jail_base(state), spec.vm_id).root
        try:
            assert handle.extra["jail_root"] == str(root)
            assert handle.control_socket == root / "firecracker.sock" and handle.control_socket.is_socket()
            assert status_ids(handle.pid) == ([str(NOBODY)] * 4, [str(NOBODY)] * 4)
            assert os.stat(f"/proc/{handle.pid}/root").st_ino == root.stat().st_ino
            assert Path(f"/proc/{handle.pid}/ns/net").stat().st_ino == ns_inode(ns.name)
            info = await vmm.describe(handle)  # through the host path of the jail's socket
            assert info["instance"]["state"] == "Running" and info["jail"] == str(root)
            config = info["config"]
            assert config["boot-source"]["kernel_image_path"] == "/vmlinux"
            assert config["boot-source"]["initrd_path"] == "/initrd"
            assert [(d["drive_id"], d["path_on_host"]) for d in config["drives"]] == [("vda", "/vda"), ("vdb", "/vdb")]
            assert (root / "vdb").stat().st_ino == work.stat().st_ino  # the VM's own file, not a copy
            assert config["vsock"]["uds_path"] == "/vsock.sock" and handle.vsock_uds == root / "vsock.sock"
            assert vmm.agent_socket(handle) == (root / "vsock.sock", True)
            assert vmm.is_alive(handle) and await vmm.adopt(Handle.from_json(handle.to_json()))
            assert "InstanceStart" in (spec.vm_dir / "vmm.log").read_text()  # hard-linked log
        finally:
            await vmm.kill(handle)
    assert not vmm.is_alive(handle) and not await vmm.adopt(handle)
    assert not Path(f"/proc/{handle.pid}/root").exists() or not jails.process_in(handle.pid, root)
    assert_no_jail_left(state)
    assert work.exists() and (spec.vm_dir / "vmm.log").exists()


def ns_inode(name: str) -> int:
    return Path(f"/run/netns/{name}").stat().st_ino


async def test_block_device_gets_a_node_in_the_jail_and_it_goes_with_it(
    binaries: tuple[str, str], state: Path
) -> None:
    backing = sparse(state / "disk.img")
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        vmm = jailed(binaries, state)
        spec = spec_for(state, disks=(Disk(Path(loop)),))
        handle = await vmm.launch(spec)
        root = Path(handle.extra["jail_root"])
        try:
            node = root / "dev" / Path(loop).name
            st, real = node.stat(), Path(loop).stat()
            assert st.st_rdev == real.st_rdev and st.st_mode & 0o777 == 0o600
            config = (await vmm.describe(handle))["config"]
            assert config["drives"][0]["path_on_host"] == f"/dev/{Path(loop).name}"
        finally:
            await vmm.stop(handle, grace=0.5)  # the tiny guest ignores Ctrl-Alt-Del: stop must kill
        assert not vmm.is_alive(handle)
        assert_no_jail_left(state)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


@pytest.mark.parametrize("failure", ["bad kernel", "missing disk", "refused at InstanceStart"])
async def test_every_failure_leaves_no_jail_and_no_process(
    binaries: tuple[str, str], state: Path, failure: str
) -> None:
    changes: dict[str, object] = {}
    if failure == "bad kernel":
        changes["kernel"] = state / "absent-vmlinux"
    elif failure == "missing disk":
        changes["disks"] = (Disk(state / "absent.ext4"),)
    else:
        bad = state / "not-elf"
        bad.write_bytes(b"\0" * 4096)
        changes["kernel"] = bad
    spec = spec_for(state, **changes)
    with pytest.raises(HostError) as err:
        await jailed(binaries, state).launch(spec)
    if failure == "refused at InstanceStart":
        assert "Invalid Elf magic" in err.value.message
    assert_no_jail_left(state)
    assert jails.jailed_pids(jails.jail_base(state)) == {}


async def test_jailer_failure_is_reported_with_its_message(binaries: tuple[str, str], state: Path) -> None:
    firecracker, jailer = binaries
    # An exec file whose name lacks "firecracker" is refused by the jailer itself.
    other = state / "fc-copy"
    other.write_bytes(Path(firecracker).read_bytes())
    other.chmod(0o755)
    vmm = FirecrackerVMM(str(other), jail=Jail(jailer, jails.jail_base(state), 0, 0, LocalPrivileged()))
    started = time.monotonic()
    with pytest.raises(HostError, match="jailer for 0123456789ab exited with status"):
        await vmm.launch(spec_for(state))
    assert time.monotonic() - started < 10
    assert_no_jail_left(state)


async def test_jailer_true_without_a_jailer_fails_before_anything_starts(state: Path) -> None:
    vmm = FirecrackerVMM("firecracker", jail=Jail("/nonexistent/jailer", jails.jail_base(state), 0, 0, None,
                                                  unavailable="jailer = true in config.toml, but no jailer"))
    with pytest.raises(ConfigError, match="jailer = true") as err:
        await vmm.launch(spec_for(state))
    assert "scripts/setup.sh --firecracker" in (err.value.hint or "")
    assert not jails.jail_base(state).exists()


async def test_the_sweep_kills_an_unrecorded_jailed_vmm_and_removes_stale_jails(
    binaries: tuple[str, str], state: Path
) -> None:
    layout = Layout(config_file=state / "config.toml", state_dir=state, cache_dir=state / "cache",
                    runtime_dir=state / "run")
    vmm = jailed(binaries, state)
    kept = await vmm.launch(spec_for(state, vm_id="aaaaaaaaaaaa", vm_dir=state / "vms" / "aaaaaaaaaaaa"))
    orphan = await vmm.launch(spec_for(state))  # spawned, then the daemon died before recording it
    stale = jails.JailPaths(jails.jail_base(state), "bbbbbbbbbbbb")
    stale.root.mkdir(parents=True)  # a jail whose VMM is long gone
    try:
        assert await sweep.kill_jailed_orphans(layout, {kept.pid}) == [orphan.pid]
        assert not vmm.is_alive(orphan) and vmm.is_alive(kept)
        removed = await sweep.remove_stale_jails(layout, LocalPrivileged(), {"aaaaaaaaaaaa"})
        assert sorted(p.name for p in removed) == ["0123456789ab", "bbbbbbbbbbbb"]
        assert [p.name for p in (jails.jail_base(state) / "firecracker").iterdir()] == ["aaaaaaaaaaaa"]
        assert await vmm.adopt(kept)
    finally:
        await vmm.kill(kept)
        await vmm.kill(orphan)
    assert_no_jail_left(state)
