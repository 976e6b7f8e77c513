"""Snapshot templates and clones under QEMU TCG: one template built, VMs restored from it, each its own
machine (MAC, address, hostname, machine-id, SSH host key, RNG output, clock), the cold paths around it
(stop/start of a clone, a broken template falling back to a cold boot), and nothing left behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from banger.testing.artifacts import VM_CONFIG
from banger.testing.daemon import Home
from banger.testing.netns import NetNS

SNAPSHOTS = VM_CONFIG.replace("snapshots = false", "snapshots = true")
assert SNAPSHOTS != VM_CONFIG

# What a clone must not share with another: read in one guest command.
IDENTITY = ("cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'; hostname; "
            "cat /etc/machine-id; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub; "
            "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s.%N")


def _create(home: Home, name: str, *extra: str) -> tuple[dict, str]:
    proc = home.cli("vm", "create", "--name", name, "--json", *extra, check=True, timeout=400)
    return json.loads(proc.stdout), proc.stderr


def _identity(home: Home, name: str) -> dict[str, object]:
    before = time.time()
    out = home.cli("vm", "ssh", name, "--", IDENTITY, check=True, timeout=120).stdout.split("\n")
    after = time.time()
    mac, addr, hostname, machine_id, host_key, random, clock = out[:7]
    return {"mac": mac, "ip": addr.split("/")[0], "hostname": hostname, "machine_id": machine_id,
            "host_key": host_key, "random": random, "clock": float(clock), "before": before, "after": after}


@pytest.mark.parametrize("vm_home", [SNAPSHOTS], indirect=True)
def test_clones_are_each_their_own_machine(vm_home: Home, netns: NetNS) -> None:
    built = vm_home.cli("vm", "templates", "build", check=True, timeout=400)
    assert "ready" in built.stdout
    [template] = json.loads(vm_home.cli("vm", "templates", "list", "--json", check=True).stdout)
    assert template["complete"] and template["vms"] == []
    tdir = vm_home.layout.state_dir / "templates" / template["id"]
    state_size = (tdir / "state").stat().st_size
    assert state_size < 4 << 20, f"the device state should be small (RAM stays in the memory file): {state_size}"
    frozen = {f: (tdir / f).stat().st_mtime_ns for f in ("memory", "root.qcow2", "work.ext4", "state")}

    a, a_log = _create(vm_home, "clone-a")
    b, b_log = _create(vm_home, "clone-b")
    for log in (a_log, b_log):
        assert "snapshot: building" not in log, "the template was built once, ahead of time"
        assert "snapshot: restoring the clone failed" not in log, log
    ids = {vm["name"]: _identity(vm_home, vm["name"]) for vm in (a, b)}
    for vm in (a, b):
        got = ids[vm["name"]]
        assert got["mac"] == vm["mac"] and got["ip"] == vm["ip"] and got["hostname"] == vm["name"]
        # The clock was set from the host on restore: within 2 s of the host's, not the template's.
        assert got["before"] - 2 <= got["clock"] <= got["after"] + 2, got
        assert len(str(got["machine_id"])) == 32 and len(str(got["random"])) == 32
    for field in ("mac", "ip", "hostname", "machine_id", "host_key", "random"):
        assert ids["clone-a"][field] != ids["clone-b"][field], f"two clones share their {field}"
    # The host key the daemon pinned is the one the guest serves (ssh above ran with strict checking).
    pinned = vm_home.layout.known_hosts.read_text()
    assert str(ids["clone-a"]["host_key"]) in pinned and str(ids["clone-b"]["host_key"]) in pinned

    listed = json.loads(vm_home.cli("vm", "templates", "list", "--json", check=True).stdout)[0]
    assert sorted(listed["vms"]) == sorted([a["id"], b["id"]])
    assert vm_home.cli("vm", "templates", "prune", "--all", check=True).stdout == ""  # in use: kept

    # A command's status comes back from a clone; --rm removes it again.
    assert vm_home.cli("vm", "run", "--rm", "--", "sh", "-c", "exit 7", timeout=300).returncode == 7

    # A clone stopped and started boots cold from its own overlays; what it wrote stays.
    vm_home.cli("vm", "ssh", "clone-a", "--", "echo kept > /root/kept.txt && sync", check=True, timeout=120)
    vm_home.cli("vm", "stop", "clone-a", check=True, timeout=120)
    vm_home.cli("vm", "start", "clone-a", check=True, timeout=300)
    again = vm_home.cli("vm", "ssh", "clone-a", "--", "cat /root/kept.txt; hostname", check=True, timeout=120)
    assert again.stdout.split() == ["kept", "clone-a"]

    assert {f: (tdir / f).stat().st_mtime_ns for f in frozen} == frozen, "clones never write their template"

    # A template that cannot be restored: the VM still comes up, cold, and says why in one line.
    (tdir / "state").write_bytes(b"not a migration stream")
    c, c_log = _create(vm_home, "clone-c")
    assert "snapshot: restoring the clone failed" in c_log and "booting cold" in c_log
    assert c["state"] == "running"
    assert vm_home.cli("vm", "ssh", "clone-c", "--", "hostname", check=True, timeout=120).stdout.strip() == "clone-c"

    vm_home.cli("vm", "delete", "clone-a", "clone-b", "clone-c", check=True, timeout=120)
    assert vm_home.cli("vm", "templates", "prune", "--all", check=True).stdout.strip() == f"{template['id']}: removed"
    assert not tdir.exists()
    assert not list((vm_home.layout.state_dir / "vms").iterdir())


@pytest.mark.parametrize("vm_home", [SNAPSHOTS], indirect=True)
def test_cold_flag_boots_from_the_image(vm_home: Home) -> None:
    vm, log = _create(vm_home, "cold-one", "--cold")
    assert vm["state"] == "running" and "snapshot:" not in log
    assert not (vm_home.layout.state_dir / "templates").exists() or not list(
        (vm_home.layout.state_dir / "templates").iterdir())
    assert (Path(vm["vm_dir"]) / "work.ext4").exists()


@pytest.mark.parametrize("vm_home", [SNAPSHOTS], indirect=True)
def test_clone_with_a_workspace_built_offline(vm_home: Home, tmp_path: Path) -> None:
    from test_workspace import git, make_repo, round_trip, sh  # the same repo and round trip as streaming

    repo = make_repo(tmp_path)
    (repo / "src/main.c").write_text("int main(void) { return 1; }\n")  # a dirty tree ships as it is
    head = git(repo, "rev-parse", "HEAD").strip()
    vm_home.cli("vm", "templates", "build", check=True, timeout=400)

    proc = vm_home.cli("vm", "run", str(repo), "-d", "--name", "wsc", "--include-untracked", "--branch", "agent/disk",
                       timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "built into a disk" in proc.stderr, proc.stderr
    shown = json.loads(vm_home.cli("vm", "show", "wsc", "--json", check=True).stdout)["workspace"]
    assert shown["offline"] and shown["head_commit"] == head and shown["guest_path"] == "/root/repo"

    # HEAD is the host's, the index is valid as shipped: only the host's own edit (and the untracked file
    # --include-untracked brought) shows, nothing re-hashed; HEAD is on the --branch.
    assert sh(vm_home, "wsc", "git rev-parse HEAD").strip() == head
    assert sh(vm_home, "wsc", "git status --porcelain").strip() == "M src/main.c\n?? notes.txt"
    assert sh(vm_home, "wsc", "git symbolic-ref --short HEAD").strip() == "agent/disk"
    assert sh(vm_home, "wsc", "git config user.name").strip() == "Repo Person"
    assert sh(vm_home, "wsc", "findmnt -n -o SOURCE,FSTYPE /root/repo").split()[1] == "ext4"
    assert vm_home.cli("vm", "exec", "wsc", "--", "cat src/main.c", check=True).stdout == \
        "int main(void) { return 1; }\n", "commands run in the workspace directory"

    git(repo, "checkout", "-q", "--", "src/main.c")
    sh(vm_home, "wsc", "git checkout -q -- src/main.c")
    round_trip(vm_home, "wsc", repo, tmp_path / "clone-offline")

    # The disk is the VM's: a stop and a cold start mount it again, with the guest's changes.
    vm_home.cli("vm", "stop", "wsc", check=True, timeout=120)
    vm_home.cli("vm", "start", "wsc", check=True, timeout=300)
    assert sh(vm_home, "wsc", "git log -1 --format=%s").strip() == "guest commit"

    # --auto-prepare unmounts the disk (kept as it is) and streams the host's repository onto the work disk,
    # where it stays across a restart.
    sh(vm_home, "wsc", "git reset -q --hard HEAD~1")  # back at the prepared commit: nothing would be lost
    again = vm_home.cli("vm", "exec", "wsc", "--auto-prepare", "--",
                        "findmnt -n /root/repo || echo unmounted; git rev-parse HEAD; cat src/main.c", timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["unmounted", head, "int main(void) { return 0; }"], again.stdout
    vm_home.cli("vm", "stop", "wsc", check=True, timeout=120)
    vm_home.cli("vm", "start", "wsc", check=True, timeout=300)
    assert sh(vm_home, "wsc", "findmnt -n /root/repo || git rev-parse HEAD").strip() == head
    vm_home.cli("vm", "delete", "wsc", check=True, timeout=120)
