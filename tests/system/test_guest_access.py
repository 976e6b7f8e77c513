"""What a user types, against real guests under QEMU TCG: vm run, vm ssh, vm ports, .vm names, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.testing.artifacts import VM_CONFIG
from banger.testing.daemon import Home
from banger.testing.netns import NetNS


@pytest.fixture
def git_home(tmp_path: Path) -> dict[str, str]:
    """A HOME whose global git identity the daemon copies into guests."""
    (tmp_path / ".gitconfig").write_text("[user]\n\tname = Ada Banger\n\temail = ada@example.test\n")
    return {"HOME": str(tmp_path)}


def _vms(home: Home) -> list[dict]:
    return json.loads(home.cli("vm", "list", "--json", check=True).stdout)


def test_run_command_exit_status_and_rm(vm_home: Home) -> None:
    proc = vm_home.cli("vm", "run", "--name", "once", "--", "sh", "-c", "uname -r; exit 7", timeout=400)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.strip().endswith("-amd64"), proc.stdout
    assert proc.stderr.startswith("spec: vcpu=2 memory=768M disk=2G image=debian-bookworm runtime=qemu")
    assert [v["name"] for v in _vms(vm_home)] == ["once"], "without --rm the VM stays"
    proc = vm_home.cli("vm", "run", "--rm", "--name", "gone", "--", "true", timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert [v["name"] for v in _vms(vm_home)] == ["once"], "--rm deletes the VM when the command ends"


def test_ssh_identity_ports_and_dns(vm_home: Home, netns: NetNS, git_home: dict[str, str]) -> None:
    vm_home.cli("daemon", "status", check=True, env=git_home)  # the daemon runs with that HOME
    vm = vm_home.cli("vm", "run", "-d", "--name", "box", env=git_home, timeout=400)
    assert vm.returncode == 0, vm.stderr
    ip = json.loads(vm_home.cli("vm", "show", "box", "--json", check=True).stdout)["ip"]

    gitconfig = vm_home.cli("vm", "ssh", "box", "--", "cat", "/root/.gitconfig", check=True).stdout
    assert "Ada Banger" in gitconfig and "ada@example.test" in gitconfig

    start = "nohup python3 -m http.server 8080 >/dev/null 2>&1 & sleep 1"
    vm_home.cli("vm", "exec", "box", "--", start, check=True)
    deadline = time.monotonic() + 60
    while True:
        ports = json.loads(vm_home.cli("vm", "ports", "box", "--json", check=True).stdout)
        listeners = ports[0]["listeners"]
        if any(li["port"] == 8080 for li in listeners) or time.monotonic() > deadline:
            break
        time.sleep(2)
    web = next(li for li in listeners if li["port"] == 8080)
    assert web["proto"] == "tcp" and web["endpoint"] == "box.vm:8080"
    assert "box.vm:8080" in vm_home.cli("vm", "ports", "box", check=True).stdout

    dig = netns.run(["dig", "+short", "@127.0.0.1", "-p", "42069", "box.vm"]).out.strip()
    assert dig == ip
    assert netns.run(["dig", "+short", "@127.0.0.1", "-p", "42069", "nosuch.vm"]).out.strip() == ""

    assert vm_home.cli("vm", "exec", "box", "--", "exit 3").returncode == 3
    # The kernel's module tree is mounted in the guest, so modprobe works (Docker needs it).
    modules = vm_home.cli("vm", "exec", "box", "--", "modprobe overlay && lsmod", check=True).stdout
    assert "overlay" in modules
    vm_home.cli("vm", "delete", "box", check=True)
    known = (vm_home.layout.known_hosts).read_text() if vm_home.layout.known_hosts.exists() else ""
    assert ip not in known and "box.vm" not in known, "vm delete drops the VM's pinned host key"


def test_interactive_run_through_tmux(vm_home: Home) -> None:
    session = f"banger-{vm_home.root.name}"
    cmd = " ".join(["ip", "netns", "exec", vm_home.netns or "", "env", f"BANGER_HOME={vm_home.root}",
                    sys.executable, "-m", "banger.cli", "vm", "run", "--name", "inter"])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", f"{cmd}; sleep 600"],
                   check=True)
    try:
        screen = _wait_screen(session, "root@inter", 400)
        assert "root@inter" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "exit", "Enter"], check=True)
        screen = _wait_screen(session, "is still running", 60)
        assert "banger vm stop inter" in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def _wait_screen(session: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                text=True).stdout
        if text in screen:
            return screen
        time.sleep(1)
    raise AssertionError(f"{text!r} never showed up in tmux:\n{screen}")


@pytest.mark.parametrize("name", ["../x", "a;b", "x" * 70, "päivä", "UPPER", "-lead"])
def test_hostile_names_are_refused(vm_home: Home, name: str) -> None:
    proc = vm_home.cli("vm", "create", "--name", name)
    assert proc.returncode == 2, proc.stderr
    assert "invalid vm name" in proc.stderr and "Traceback" not in proc.stderr
    assert _vms(vm_home) == []
    assert not any(vm_home.layout.vms_dir.iterdir())


@pytest.mark.parametrize("vm_home", [VM_CONFIG + '[[file_sync]]\nhost = "~/.bashrc"\nguest = "../etc/passwd"\n'],
                         indirect=True)
def test_file_sync_escaping_root_is_refused(vm_home: Home) -> None:
    proc = vm_home.cli("vm", "create", "--name", "escapee", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "file_sync[0]" in proc.stderr
    assert _vms(vm_home) == [] and not any(vm_home.layout.vms_dir.iterdir())


NO_SSHD = VM_CONFIG.replace("[vm_defaults]", 'ssh_ready_timeout = "25s"\n[vm_defaults]\n'
                                            'kernel_args = "systemd.mask=ssh.service"')


@pytest.mark.parametrize("vm_home", [NO_SSHD], indirect=True)
def test_guest_without_sshd_is_reported_and_kept(vm_home: Home, netns: NetNS) -> None:
    proc = vm_home.cli("vm", "run", "--rm", "--name", "mute", "--", "true", timeout=400)
    assert proc.returncode == 7, proc.stderr  # GuestError
    assert "'mute'" in proc.stderr and "sshd" in proc.stderr
    assert "banger vm logs mute" in proc.stderr and "left running" in proc.stderr
    vms = _vms(vm_home)
    assert [v["name"] for v in vms] == ["mute"] and vms[0]["state"] == "running", "--rm keeps it for inspection"
    vm_home.cli("vm", "delete", "mute", check=True)


def test_dns_port_conflict_is_reported_and_nothing_else_breaks(vm_home: Home, netns: NetNS) -> None:
    squatter = subprocess.Popen(netns.argv([sys.executable, "-c", (
        "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('127.0.0.1', 42069)); print('bound', flush=True); time.sleep(600)")]),
        stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "bound"
        status = json.loads(vm_home.cli("daemon", "status", "--json", check=True).stdout)
        assert status["dns"].startswith("not serving") and "42069" in status["dns"]
        assert "dns_listen" in status["dns"], "the message says what to change"
        assert _vms(vm_home) == [], "the daemon still serves everything else"
    finally:
        squatter.kill()
        squatter.wait()
