"""Faults with real processes: daemon and VMM killed with SIGKILL, racing creates, NAT cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from banger.testing.daemon import Home
from banger.testing.netns import NetNS


def _vm(home: Home, name: str) -> dict:
    return json.loads(home.cli("vm", "show", name, "--json", check=True).stdout)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _nft_rules(netns: NetNS) -> str:
    return netns.run(["nft", "list", "ruleset"], check=False).out


def test_two_creates_with_one_name_exactly_one_wins(vm_home: Home) -> None:
    vm_home.cli("daemon", "status", check=True)  # one daemon, started before the race
    argv = vm_home._wrap([sys.executable, "-m", "banger.cli", "vm", "create", "--name", "twin", "--no-start"])
    procs = [subprocess.Popen(argv, env=vm_home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 4], results
    loser = next(err for rc, err in results if rc == 4)
    assert "already exists" in loser
    vms = json.loads(vm_home.cli("vm", "list", "--json", check=True).stdout)
    assert [v["name"] for v in vms] == ["twin"] and vms[0]["state"] == "stopped" or vms[0]["state"] == "created"
    assert len(list(vm_home.layout.vms_dir.iterdir())) == 1, "the loser must leave no VM directory"


def test_daemon_sigkilled_during_create_leaves_nothing(vm_home: Home, netns: NetNS) -> None:
    vm_home.cli("daemon", "status", check=True)
    argv = vm_home._wrap([sys.executable, "-m", "banger.cli", "vm", "create", "--name", "doomed"])
    cli = subprocess.Popen(argv, env=vm_home.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def booting() -> bool:
        ops = json.loads(vm_home.cli("daemon", "operations", "--json", check=True).stdout)
        return any(o["stage"] == "waiting for guest" for o in ops)

    _wait(booting, 300, "the create to reach its boot stage")
    vm_dir = next(vm_home.layout.vms_dir.iterdir())
    qemu_pid = json.loads((vm_dir / "handles.json").read_text())["vmm"]["pid"]
    tap = json.loads((vm_dir / "handles.json").read_text())["tap"]
    vm_home.kill_daemon()
    cli.wait(timeout=60)
    assert _alive(qemu_pid), "the VMM outlives the daemon (its own session)"

    assert json.loads(vm_home.cli("vm", "list", "--json", check=True).stdout) == []  # restarts the daemon
    assert not _alive(qemu_pid), "the restarted daemon must undo the interrupted create"
    assert not vm_dir.exists()
    assert tap not in netns.run(["ip", "-br", "link"]).out
    assert str(vm_dir) not in netns.run(["ps", "-eo", "args"]).out


def test_vmm_sigkill_is_noticed_and_nat_released(vm_home: Home, netns: NetNS) -> None:
    vm = json.loads(vm_home.cli("vm", "create", "--name", "victim", "--nat", "--json", check=True,
                                timeout=400).stdout)
    assert f"banger:{vm['id']}" in _nft_rules(netns)
    handles = json.loads((Path(vm["vm_dir"]) / "handles.json").read_text())
    os.kill(handles["vmm"]["pid"], signal.SIGKILL)
    _wait(lambda: _vm(vm_home, "victim")["state"] != "running", 30, "the daemon to notice the dead VMM")
    dead = _vm(vm_home, "victim")
    assert dead["state"] == "error"
    assert "exited unexpectedly" in dead["reason"] and str(handles["vmm"]["pid"]) in dead["reason"]
    assert f"banger:{vm['id']}" not in _nft_rules(netns)
    assert handles["tap"] not in netns.run(["ip", "-br", "link"]).out
    shown = vm_home.cli("vm", "show", "victim").stdout
    assert "exited unexpectedly" in shown


def test_restarted_daemon_readopts_a_running_vm(vm_home: Home, netns: NetNS) -> None:
    vm = json.loads(vm_home.cli("vm", "create", "--name", "keeper", "--json", check=True, timeout=400).stdout)
    pid = json.loads((Path(vm["vm_dir"]) / "handles.json").read_text())["vmm"]["pid"]
    vm_home.kill_daemon()
    assert _vm(vm_home, "keeper")["state"] == "running"  # a new daemon, same VM
    assert _alive(pid)
    log = vm_home.layout.daemon_log.read_text()
    assert "re-adopted running VM" in log
    vm_home.cli("vm", "stop", "keeper", check=True, timeout=120)  # the adopted handles work
    assert not _alive(pid)
    assert _vm(vm_home, "keeper")["state"] == "stopped"
