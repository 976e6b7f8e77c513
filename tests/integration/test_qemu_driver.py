"""The QEMU driver booting banger's real kernel and initrd under TCG, controlled over QMP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from banger.errors import HostError
from banger.host.qemu import QemuVMM, qmp_execute
from banger.host.run import run
from banger.host.vmm import Disk, Handle, LaunchSpec, driver_for, mac_for
from banger.testing.netns import NetNS


def spec_for(kernel_dir: Path, vm_dir: Path, cmdline: str, **changes: object) -> LaunchSpec:
    base: dict[str, object] = dict(
        vm_id="qemu-test-1", name="q1", kernel=kernel_dir / "vmlinux", initrd=kernel_dir / "initrd.img",
        cmdline=cmdline, disks=(), tap=None, mac=None, vcpu=1, memory_mib=256, vm_dir=vm_dir)
    base.update(changes)
    return LaunchSpec(**base)  # type: ignore[arg-type]


async def wait_console(handle: Handle, text: str, within: float) -> str:
    """The console log once it contains ``text``; fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        console = handle.console_log.read_text(errors="replace")
        if text in console:
            return console
        await asyncio.sleep(0.2)
    pytest.fail(f"{text!r} not on the console within {within}s:\n{handle.console_log.read_text()[-3000:]}")


async def wait_gone(vmm: QemuVMM, handle: Handle, within: float) -> None:
    deadline = time.monotonic() + within
    while vmm.is_alive(handle):
        assert time.monotonic() < deadline, f"QEMU still running after {within}s"
        await asyncio.sleep(0.2)


async def test_probe_boot_prints_marker_and_powers_off(default_kernel: Path, tmp_path: Path) -> None:
    vmm = driver_for("qemu", firecracker_bin="firecracker", qemu_bin="qemu-system-x86_64")
    assert isinstance(vmm, QemuVMM)
    handle = await vmm.launch(spec_for(default_kernel, tmp_path / "vm", "console=ttyS0 banger.probe=1"))
    try:
        await wait_console(handle, "BANGER-PROBE-OK", 90)
        await wait_gone(vmm, handle, 30)  # the init powers the VM off and QEMU exits by itself
    finally:
        await vmm.kill(handle)
    assert not handle.control_socket.exists()


async def test_running_vm_answers_qmp_and_stops(default_kernel: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    with open(base, "wb") as f:
        f.truncate(32 << 20)
    overlay = tmp_path / "work.qcow2"
    await run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay])
    vmm = QemuVMM()
    with NetNS() as ns:
        ns.run(["ip", "tuntap", "add", "dev", "tap-q0", "mode", "tap"])
        ns.run(["ip", "link", "set", "tap-q0", "up"])
        # root=/dev/vdz never appears: the init waits 10s for it, which keeps the VM up for the test.
        spec = spec_for(default_kernel, tmp_path / "vm", "console=ttyS0 root=/dev/vdz",
                        disks=(Disk(base, read_only=True), Disk(overlay, format="qcow2")),
                        tap="tap-q0", netns=ns.name)
        handle = await vmm.launch(spec)
        try:
            info = await vmm.describe(handle)
            assert info["status"]["status"] == "running" and info["vcpus"] == 1
            assert info["memory_mib"] == 256
            assert [(d["file"], d["read_only"], d["format"]) for d in info["drives"]] == [
                (str(base), True, "raw"), (str(overlay), False, "qcow2")]
            again = Handle.from_json(handle.to_json())
            assert vmm.is_alive(again) and await vmm.adopt(again)
            console = await wait_console(handle, "[vdb]", 60)  # the guest sees the disks in order
            assert console.index("[vda]") < console.index("[vdb]")
            assert "NO-CARRIER" not in ns.run(["ip", "-o", "link", "show", "tap-q0"]).out  # QEMU holds it
            nics = await qmp_execute(handle.control_socket, "query-rx-filter")
            assert [nic["main-mac"] for nic in nics] == [mac_for("qemu-test-1")]
            started = time.monotonic()
            await vmm.stop(handle, grace=1)  # no ACPI listener in the initrd: `quit` must follow
            assert time.monotonic() - started < 10
        finally:
            await vmm.kill(handle)
        assert "NO-CARRIER" in ns.run(["ip", "-o", "link", "show", "tap-q0"]).out
    assert not vmm.is_alive(handle) and not await vmm.adopt(handle)
    assert not handle.control_socket.exists()


async def test_kill_is_prompt(default_kernel: Path, tmp_path: Path) -> None:
    vmm = QemuVMM()
    handle = await vmm.launch(spec_for(default_kernel, tmp_path / "vm", "console=ttyS0 root=/dev/vdz"))
    assert (await qmp_execute(handle.control_socket, "query-status"))["running"]
    started = time.monotonic()
    await vmm.kill(handle)
    assert time.monotonic() - started < 5 and not vmm.is_alive(handle)


async def test_launch_failure_leaves_nothing(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, tmp_path / "vm", "console=ttyS0")  # no vmlinux there: QEMU exits at once
    with pytest.raises(HostError, match="QEMU exited"):
        await QemuVMM().launch(spec)
    assert not (tmp_path / "vm" / "qmp.sock").exists()
    assert "vmlinux" in (tmp_path / "vm" / "vmm.log").read_text()
