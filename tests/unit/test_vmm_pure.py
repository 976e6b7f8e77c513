"""Pure parts of the VMM drivers: runtime selection, command lines, API bodies, handle serialisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.errors import HostError, InvalidArgument
from banger.host.firecracker import FirecrackerPaths, config_calls
from banger.host.kvm_probe import ProbeResult, select_runtime
from banger.host.qemu import guest_cmdline, qemu_argv
from banger.host.vmm import Disk, Handle, LaunchSpec, driver_for, mac_for

OK = ProbeResult(True, "a Firecracker guest booted in 0.4s")
FAILED = ProbeResult(False, "a Firecracker guest did not boot within 8s")


def spec(**changes: object) -> LaunchSpec:
    base: dict[str, object] = dict(
        vm_id="vm-1", name="dev", kernel=Path("/k/vmlinux"), initrd=Path("/k/initrd.img"),
        cmdline="console=ttyS0 root=/dev/vda", disks=(Disk(Path("/d/root,1.ext4"), read_only=True),
                                                       Disk(Path("/d/work.qcow2"), format="qcow2")),
        tap="tap0", mac=None, vcpu=2, memory_mib=1024, vm_dir=Path("/s/vm-1"))
    base.update(changes)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def test_auto_prefers_firecracker_only_when_the_probe_passed() -> None:
    assert select_runtime("auto", OK)[:2] == ("firecracker", "kvm")
    runtime, accel, line = select_runtime("auto", FAILED)
    assert (runtime, accel) == ("qemu", "tcg") and "did not boot within 8s" in line
    assert select_runtime("auto", None)[:2] == ("qemu", "tcg")


def test_firecracker_is_never_silently_downgraded() -> None:
    assert select_runtime("firecracker", OK)[:2] == ("firecracker", "kvm")
    for probe in (FAILED, None):
        with pytest.raises(HostError) as err:
            select_runtime("firecracker", probe)
        assert "--runtime qemu" in str(err.value)


def test_qemu_uses_kvm_when_it_works() -> None:
    assert select_runtime("qemu", OK)[:2] == ("qemu", "kvm")
    assert select_runtime("qemu", FAILED)[:2] == ("qemu", "tcg")
    with pytest.raises(InvalidArgument):
        select_runtime("vbox", OK)
    with pytest.raises(InvalidArgument):
        driver_for("vbox", firecracker_bin="firecracker", qemu_bin="qemu-system-x86_64")


def test_qemu_command_line() -> None:
    argv = qemu_argv("qemu-system-x86_64", spec(), vsock=False, tsc_khz=2600000)
    joined = " ".join(argv)
    assert "-accel tcg -cpu max" in joined
    assert "-drive id=d0,file=/d/root,,1.ext4,format=raw,if=none,readonly=on" in joined  # comma escaped
    assert "-device virtio-blk-device,drive=d0 -drive id=d1,file=/d/work.qcow2,format=qcow2,if=none " in joined
    assert f"virtio-net-device,netdev=n0,mac={mac_for('vm-1')}" in joined
    assert argv[argv.index("-append") + 1] == "console=ttyS0 root=/dev/vda tsc_early_khz=2600000"
    assert argv[-2:] == ["-qmp", "unix:/s/vm-1/qmp.sock,server=on,wait=off"]
    kvm = qemu_argv("qemu-system-x86_64", spec(accel="kvm", netns="ns1", vsock_cid=5), vsock=True)
    assert kvm[:4] == ["ip", "netns", "exec", "ns1"] and "host" in kvm and "vhost-vsock-device,guest-cid=5" in kvm


def test_qemu_agent_port_and_snapshot_arguments() -> None:
    argv = qemu_argv("qemu-system-x86_64", spec(), vsock=False)
    joined = " ".join(argv)
    assert "-chardev socket,id=agent,path=/s/vm-1/agent.sock,server=on,wait=off" in joined
    assert "virtserialport,chardev=agent,name=org.banger.agent" in joined
    assert "memory-backend" not in joined and "-incoming" not in argv
    template = " ".join(qemu_argv("q", spec(memory_file=Path("/t/mem,1"), memory_shared=True), vsock=False))
    assert "memory-backend-file,id=ram,size=1024M,mem-path=/t/mem,,1,share=on" in template
    assert "microvm,x-option-roms=off,rtc=on,memory-backend=ram" in template
    clone = qemu_argv("q", spec(memory_file=Path("/t/mem"), restore_from=Path("/t/state")), vsock=False)
    assert "share=off" in " ".join(clone) and clone[clone.index("-incoming") + 1] == "defer"
    assert "-no-reboot" in clone and "-no-reboot" not in template  # a clone that reboots would be its template


def test_tsc_workaround_only_under_tcg() -> None:
    assert guest_cmdline(spec(accel="kvm"), 2600000) == "console=ttyS0 root=/dev/vda"
    assert guest_cmdline(spec(cmdline="x tsc_early_khz=1"), 2600000) == "x tsc_early_khz=1"
    assert guest_cmdline(spec(), None) == "console=ttyS0 root=/dev/vda"


def test_firecracker_calls_keep_guest_order() -> None:
    calls = dict(config_calls(spec(disks=(Disk(Path("/a")), Disk(Path("/b"), read_only=True)), vsock_cid=9),
                              FirecrackerPaths(Path("/s/vm-1"))))
    assert list(calls)[:4] == ["/logger", "/metrics", "/boot-source", "/machine-config"]
    assert calls["/drives/vdb"] == {"drive_id": "vdb", "path_on_host": "/b", "is_root_device": False,
                                    "is_read_only": True}
    assert calls["/vsock"] == {"guest_cid": 9, "uds_path": "/s/vm-1/vsock.sock"}
    assert calls["/network-interfaces/eth0"]["guest_mac"] == mac_for("vm-1")


def test_handle_json_round_trip() -> None:
    handle = Handle(runtime="qemu", pid=42, vm_dir=Path("/s/vm-1"), control_socket=Path("/s/vm-1/qmp.sock"),
                    console_log=Path("/s/vm-1/console.log"), started_at=1.5, extra={"vsock_cid": 5})
    assert Handle.from_json(handle.to_json()) == handle
