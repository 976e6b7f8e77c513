"""The Firecracker driver against the real v1.12.1 binary, up to InstanceStart (KVM cannot run guests here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from banger.errors import HostError, InvalidArgument
from banger.host.firecracker import (
    FirecrackerAPI,
    FirecrackerVMM,
    check_version,
    firecracker_version,
    parse_version,
    version_supported,
)
from banger.host.kvm_probe import CACHE_FILE, probe_kvm_boot
from banger.host.vmm import Disk, Handle, LaunchSpec, driver_for, mac_for
from banger.testing.firecracker import firecracker_binary, sparse, tiny_elf
from banger.testing.netns import NetNS


@pytest.fixture(scope="session")
def firecracker_bin(banger_test_cache: Path) -> str:
    return str(firecracker_binary(banger_test_cache))


def spec_for(tmp_path: Path, **changes: object) -> LaunchSpec:
    base: dict[str, object] = dict(
        vm_id="fc-test-1", name="fc1", kernel=tiny_elf(tmp_path / "vmlinux"), initrd=None,
        cmdline="console=ttyS0 reboot=k panic=1", disks=(), tap=None, mac=None, vcpu=1,
        memory_mib=128, vm_dir=tmp_path / "vm")
    base.update(changes)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def firecracker_pids_for(marker: Path) -> list[int]:
    """Pids of every process whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.fsencode(marker) in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_full_configuration_is_accepted_and_reported(firecracker_bin: str, tmp_path: Path) -> None:
    rootfs, work = sparse(tmp_path / "rootfs.ext4"), sparse(tmp_path / "work.ext4")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\0" * 4096)
    with NetNS() as ns:
        ns.run(["ip", "tuntap", "add", "dev", "tap-fc0", "mode", "tap"])
        spec = spec_for(tmp_path, initrd=initrd, disks=(Disk(rootfs, read_only=True), Disk(work)),
                        tap="tap-fc0", vcpu=2, memory_mib=256, vsock_cid=7, netns=ns.name,
                        cmdline="console=ttyS0 root=/dev/vda ip=10.0.0.2::10.0.0.1:255.255.255.0")
        vmm = FirecrackerVMM(firecracker_bin)
        handle = await vmm.launch(spec)
        try:
            info = await vmm.describe(handle)
            assert info["instance"]["state"] == "Running"  # InstanceStart was acknowledged
            config = info["config"]
            assert config["boot-source"] == {"kernel_image_path": str(spec.kernel),
                                             "initrd_path": str(initrd), "boot_args": spec.cmdline}
            assert [(d["drive_id"], d["path_on_host"], d["is_read_only"], d["is_root_device"])
                    for d in config["drives"]] == [("vda", str(rootfs), True, False),
                                                   ("vdb", str(work), False, False)]
            assert config["machine-config"]["vcpu_count"] == 2
            assert config["machine-config"]["mem_size_mib"] == 256
            assert config["network-interfaces"][0]["host_dev_name"] == "tap-fc0"
            assert config["network-interfaces"][0]["guest_mac"] == mac_for("fc-test-1")
            assert config["vsock"] == {"guest_cid": 7, "uds_path": str(spec.vm_dir / "vsock.sock")}
            assert vmm.is_alive(handle) and await vmm.adopt(handle)
            assert firecracker_pids_for(handle.control_socket) == [handle.pid]
        finally:
            await vmm.kill(handle)
    assert not vmm.is_alive(handle) and not await vmm.adopt(handle)
    assert firecracker_pids_for(handle.control_socket) == []
    assert not handle.control_socket.exists() and not (spec.vm_dir / "vsock.sock").exists()
    assert "InstanceStart" in (spec.vm_dir / "vmm.log").read_text()


async def test_handle_round_trips_and_readopts(firecracker_bin: str, tmp_path: Path) -> None:
    vmm = driver_for("firecracker", firecracker_bin=firecracker_bin, qemu_bin="qemu-system-x86_64")
    handle = await vmm.launch(spec_for(tmp_path))
    try:
        again = Handle.from_json(handle.to_json())
        assert again == handle
        assert await vmm.adopt(again)
    finally:
        await vmm.kill(handle)


async def test_stop_sends_ctrl_alt_del_then_kills(firecracker_bin: str, tmp_path: Path) -> None:
    vmm = FirecrackerVMM(firecracker_bin)
    handle = await vmm.launch(spec_for(tmp_path))
    started = time.monotonic()
    await vmm.stop(handle, grace=0.5)  # the tiny guest ignores Ctrl-Alt-Del, so the kill must follow
    assert time.monotonic() - started < 5
    assert not vmm.is_alive(handle) and not handle.control_socket.exists()
    assert "SendCtrlAltDel" in (tmp_path / "vm" / "vmm.log").read_text()
    await vmm.stop(handle, grace=0.5)  # stopping a stopped VM is a no-op


@pytest.mark.parametrize(
    ("change", "call", "fault"),
    [
        ({"kernel": Path("/nonexistent/vmlinux")}, "PUT /boot-source", "kernel file cannot be opened"),
        ({"disks": (Disk(Path("/nonexistent/rootfs.ext4")),)}, "PUT /drives/vda", "No such file"),
        ({"tap": "tap-fc1", "mac": "not-a-mac"}, "PUT /network-interfaces/eth0", "MAC address is invalid"),
    ],
)
async def test_refused_call_is_named_and_nothing_is_left(
    firecracker_bin: str, tmp_path: Path, change: dict[str, object], call: str, fault: str
) -> None:
    spec = spec_for(tmp_path, **change)
    with NetNS() as ns:  # Firecracker creates a missing tap (we are root): keep it off the host
        with pytest.raises(HostError) as err:
            await FirecrackerVMM(firecracker_bin).launch(spec_for(tmp_path, netns=ns.name, **change))
    assert call in err.value.message and fault in err.value.message
    assert firecracker_pids_for(spec.vm_dir / "firecracker.sock") == []
    assert not (spec.vm_dir / "firecracker.sock").exists()


async def test_instance_start_refusal_is_reported(firecracker_bin: str, tmp_path: Path) -> None:
    bad_kernel = tmp_path / "not-elf"
    bad_kernel.write_bytes(b"\0" * 4096)
    with pytest.raises(HostError, match="PUT /actions.*Invalid Elf magic"):
        await FirecrackerVMM(firecracker_bin).launch(spec_for(tmp_path, kernel=bad_kernel))
    assert firecracker_pids_for(tmp_path / "vm" / "firecracker.sock") == []


async def test_early_exit_is_reported_with_its_output(firecracker_bin: str, tmp_path: Path) -> None:
    # Firecracker refuses instance ids with characters outside [A-Za-z0-9-] and exits at once.
    with pytest.raises(HostError, match="exited with status"):
        await FirecrackerVMM(firecracker_bin).launch(spec_for(tmp_path, vm_id="bad_id!"))


@pytest.mark.parametrize(
    "change", [{"disks": (Disk(Path("/x.qcow2"), format="qcow2"),)}, {"vcpu": 3}, {"vcpu": 0}]
)
async def test_unsupported_specs_are_refused_before_launch(tmp_path: Path, change: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        await FirecrackerVMM("/nonexistent/firecracker").launch(spec_for(tmp_path, **change))


async def test_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    handle = Handle(runtime="firecracker", pid=os.getpid(), vm_dir=tmp_path,
                    control_socket=tmp_path / "firecracker.sock", console_log=tmp_path / "console.log",
                    started_at=0.0)
    vmm = FirecrackerVMM("firecracker")
    assert not vmm.is_alive(handle) and not await vmm.adopt(handle)
    await vmm.kill(handle)  # must not signal the unrelated process (this test runner)


async def test_version_is_read_and_checked(firecracker_bin: str) -> None:
    version = await firecracker_version(firecracker_bin)
    assert version == (1, 12, 1) and version_supported(version)
    check_version(version)
    assert parse_version("Firecracker v1.8.0\n\n") == (1, 8, 0)
    assert not version_supported((1, 7, 9)) and not version_supported((2, 0, 0))
    with pytest.raises(HostError, match="not supported"):
        check_version((1, 7, 0))
    with pytest.raises(HostError):
        parse_version("qemu 7.2")


async def test_api_error_when_nothing_listens(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="GET / on"):
        await FirecrackerAPI(tmp_path / "absent.sock").get("/")


async def test_boot_probe_fails_fast_on_this_host(
    firecracker_bin: str, default_kernel: Path, tmp_path: Path
) -> None:
    """This machine's KVM accepts InstanceStart but cannot run the guest: the probe must say no, quickly."""
    kernel, initrd = default_kernel / "vmlinux", default_kernel / "initrd.img"
    started = time.monotonic()
    result = await probe_kvm_boot(firecracker_bin, kernel, initrd, tmp_path, timeout=3.0)
    elapsed = time.monotonic() - started
    assert not result.ok and "did not boot within 3s" in result.reason
    assert elapsed < 6
    assert [p.name for p in tmp_path.iterdir()] == [CACHE_FILE]  # the probe's VM dir is gone
    assert not [p for p in Path("/proc").glob("[0-9]*") if _mentions(p, tmp_path)]
    started = time.monotonic()
    assert await probe_kvm_boot(firecracker_bin, kernel, initrd, tmp_path, timeout=3.0) == result
    assert time.monotonic() - started < 1.5  # answered from the cache


def _mentions(proc: Path, marker: Path) -> bool:
    try:
        return os.fsencode(marker) in (proc / "cmdline").read_bytes()
    except OSError:
        return False
