"""A real VM under QEMU TCG in a private namespace: create, boot, stop, start (work disk kept), delete."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from banger.testing.daemon import Home
from banger.testing.netns import NetNS

BANNER = "import socket,sys; s=socket.create_connection((sys.argv[1],22),5); print(s.recv(64).decode())"


def _vm(home: Home, name: str) -> dict:
    return json.loads(home.cli("vm", "show", name, "--json", check=True).stdout)


def _wait_console(path: Path, pattern: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        time.sleep(1)
    raise AssertionError(f"{pattern!r} never appeared on the console:\n{path.read_text(errors='replace')[-3000:]}")


def _proc_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def _superblock(work: Path, netns: NetNS) -> dict[str, str]:
    out = netns.run(["dumpe2fs", "-h", str(work)]).out
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def test_vm_lifecycle_under_qemu(vm_home: Home, netns: NetNS) -> None:
    created = json.loads(vm_home.cli("vm", "create", "--name", "life", "--json", check=True, timeout=400).stdout)
    assert created["state"] == "running" and created["runtime"] == "qemu"
    vm_dir, ip = Path(created["vm_dir"]), created["ip"]
    assert (vm_dir / "root.qcow2").exists(), "QEMU VMs get a qcow2 overlay over the image"

    # The boot's end on the serial console: systemd's multi-user line, or the getty's prompt (systemd stops
    # printing status once the getty owns the console, which under load can come first).
    console = _wait_console(vm_dir / "console.log", r"Reached target.*Multi-User System|\blogin: ")
    assert "banger-init" in console or "switch_root" in console or "systemd" in console
    assert netns.run(["python3", "-c", BANNER, ip]).out.startswith("SSH-2.0-")

    handles = json.loads((vm_dir / "handles.json").read_text())
    tap, pid = handles["tap"], handles["vmm"]["pid"]
    assert re.search(rf"\b{tap}:.*master banger0", netns.run(["ip", "-o", "link", "show", tap]).out)
    assert _proc_alive(pid)

    vm_home.cli("vm", "stop", "life", check=True, timeout=120)
    stopped = _vm(vm_home, "life")
    assert stopped["state"] == "stopped" and stopped["reason"] is None
    assert not _proc_alive(pid)
    assert tap not in netns.run(["ip", "-br", "link"]).out
    assert not (vm_dir / "handles.json").exists()
    first = _superblock(vm_dir / "work.ext4", netns)
    assert first["Last mounted on"] == "/root", "the guest mounted its work disk at /root"
    assert first["Filesystem state"] == "clean", "a graceful stop unmounts the work disk cleanly"

    # Leave something on the work disk while the VM is stopped; it must survive a boot and a stop.
    marker = vm_dir / "marker.txt"
    marker.write_text("kept across restarts\n")
    netns.run(["debugfs", "-w", "-R", f"write {marker} /marker.txt", str(vm_dir / "work.ext4")])

    vm_home.cli("vm", "start", "life", check=True, timeout=300)
    again = _vm(vm_home, "life")
    assert again["state"] == "running" and again["ip"] == ip
    vm_home.cli("vm", "stop", "life", check=True, timeout=120)
    second = _superblock(vm_dir / "work.ext4", netns)
    assert int(second["Mount count"]) > int(first["Mount count"]), "the second boot mounted the same disk"
    assert "kept across restarts" in netns.run(["debugfs", "-R", "cat /marker.txt", str(vm_dir / "work.ext4")]).out

    vm_home.cli("vm", "delete", "life", check=True, timeout=120)
    assert json.loads(vm_home.cli("vm", "list", "--json", check=True).stdout) == []
    assert not vm_dir.exists()
    assert tap not in netns.run(["ip", "-br", "link"]).out
    assert str(vm_dir) not in netns.run(["losetup", "-a"]).out
    assert str(vm_dir) not in netns.run(["ps", "-eo", "args"]).out, "no VMM process of the VM may remain"
