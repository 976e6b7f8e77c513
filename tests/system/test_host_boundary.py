"""The host boundary with real guests: per-start config disk, daemon-made host keys, guest-grown disks, a
guest that wrecks its own work disk, and guests that send as each other. QEMU TCG in a private namespace.

What the host runs is checked from the run's command log (every program banger's spawner starts, with
its arguments; see banger.testing.leaks): no e2fsprogs program ever opens a disk a guest has written.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.guest import ssh
from banger.testing import leaks
from banger.testing.artifacts import VM_CONFIG
from banger.testing.daemon import Home
from banger.testing.netns import NetNS

E2FSPROGS = ("debugfs", "e2fsck", "resize2fs", "dumpe2fs", "tune2fs", "mke2fs", "mkfs.ext4", "e2label")


def _vm(home: Home, name: str) -> dict:
    return json.loads(home.cli("vm", "show", name, "--json", check=True).stdout)


def _guest(home: Home, name: str, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return home.cli("vm", "ssh", name, "--", command, check=check, timeout=120)


def _commands() -> int:
    return len(leaks.command_log(os.environ[leaks.RUN_ENV]))


def _e2fsprogs_on(path: Path, since: int) -> list[str]:
    """Commands of this run, from the ``since``-th on, that ran an e2fsprogs program naming ``path``."""
    return [line for line in leaks.command_log(os.environ[leaks.RUN_ENV])[since:]
            if str(path) in line and os.path.basename(line.split("\t", 1)[0]) in E2FSPROGS]


def _digest(path: Path, size: int = 64 << 20) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def test_host_key_pinned_at_create_config_disk_and_guest_grown_work_disk(vm_home: Home) -> None:
    home = vm_home
    home.cli("vm", "create", "--name", "box", "--no-start", check=True)
    fresh = _commands()  # making the work disk from the image's seed is the host's; after that, never
    vm = _vm(home, "box")
    vm_dir = Path(vm["vm_dir"])
    public = " ".join((vm_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    # No trust on first use: pinned for the address and the name before the VM ever ran.
    assert ssh.pinned_keys(home.layout.known_hosts, vm["ip"]) == [public]
    assert ssh.pinned_keys(home.layout.known_hosts, "box.vm") == [public]
    home.cli("vm", "start", "box", check=True)
    assert " ".join(_guest(home, "box", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]) == public
    assert _guest(home, "box", "stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys").stdout.split() == \
        ["700", "root", "600", "root"]
    assert _guest(home, "box", "cat /root/.banger-seeded >/dev/null && echo seeded").stdout.strip() == "seeded"
    mounted = _guest(home, "box", "findmnt -no OPTIONS /run/banger-config || echo unmounted").stdout
    assert "unmounted" in mounted, "the config disk is only mounted while banger-config copies from it"
    # Grow while stopped: the host enlarges only the file; the guest grows its filesystem at boot.
    home.cli("vm", "stop", "box", check=True)
    work = vm_dir / "work.ext4"
    before = _digest(work)
    home.cli("vm", "set", "box", "--disk-size", "4G", check=True)
    assert work.stat().st_size == 4 << 30 and _digest(work) == before
    home.cli("vm", "start", "box", check=True)
    size = int(_guest(home, "box", "df -B1 --output=size /root | tail -1").stdout)
    assert size > 3.5 * (1 << 30), size
    assert _e2fsprogs_on(work, fresh) == [], "the host ran e2fsprogs on a disk the guest wrote"


@pytest.mark.parametrize("vm_home", [VM_CONFIG.replace('tap_pool_size = 1', 'tap_pool_size = 1\n'
                                                       'ssh_ready_timeout = "25s"')], indirect=True)
def test_a_guest_that_wrecks_its_work_disk_is_started_again_without_the_host_parsing_it(vm_home: Home) -> None:
    home = vm_home
    home.cli("vm", "create", "--name", "wreck", check=True)
    fresh = _commands()
    work = Path(_vm(home, "wreck")["vm_dir"]) / "work.ext4"
    # Random bytes over the superblock and group descriptors, straight to the device, then the VM is
    # killed at once (no unmount, no journal commit that would write the kernel's copy back).
    _guest(home, "wreck", "dd if=/dev/urandom of=/dev/vdb bs=1024 seek=1 count=64 conv=notrunc,fsync 2>/dev/null")
    home.cli("vm", "kill", "wreck", check=True)
    broken = subprocess.run(["e2fsck", "-fn", str(work)], capture_output=True)  # the test's check, not banger's
    assert broken.returncode != 0, "the guest's scribbling must have landed for this test to mean anything"
    wrecked = _digest(work)
    started = time.monotonic()
    again = home.cli("vm", "start", "wreck", timeout=300)
    # Its /root cannot be mounted, so its sshd cannot let banger in: a guest problem, reported as one.
    assert again.returncode == 1 and "did not answer" in again.stderr, again.stderr  # per-VM failure
    with home.client() as c:
        t = time.monotonic()
        c.ping()
        assert time.monotonic() - t < 2
    assert time.monotonic() - started < 120
    assert _digest(work) == wrecked, "the host wrote nothing into the guest's disk"
    assert _e2fsprogs_on(work, fresh) == []
    home.cli("vm", "delete", "wreck", check=True)


SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 2:
    s.bind((sys.argv[2], 0))
s.sendto(sys.argv[1].encode(), ("{gw}", 9999))
"""

ARP_CLAIM = """
import socket, struct, sys
mac = bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':', ''))
ip = socket.inet_aton(sys.argv[1])
gw = socket.inet_aton("{gw}")
frame = b'\\xff' * 6 + mac + b'\\x08\\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 2) + mac + ip + b'\\xff' * 6 + gw
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for _ in range(3):
    s.send(frame)
"""

LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{gw}", 9999))
s.settimeout(0.5)
out = open(sys.argv[1], "a", buffering=1)
end = time.monotonic() + 240
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(100)
    except TimeoutError:
        continue
    out.write(f"{{addr[0]}} {{data.decode()}}\\n")
"""


def test_a_guest_cannot_send_or_answer_as_another_guest(vm_home: Home, netns: NetNS, tmp_path: Path) -> None:
    home = vm_home
    gw = "172.30.0.1"
    for name in ("alpha", "beta"):  # alpha has NAT; beta must not be able to borrow it
        home.cli("vm", "create", "--name", name, *(["--nat"] if name == "alpha" else []), check=True, timeout=600)
    a, b = _vm(home, "alpha"), _vm(home, "beta")
    got = tmp_path / "received"
    listener = subprocess.Popen(netns.argv([sys.executable, "-c", LISTEN.format(gw=gw), str(got)]))
    try:
        time.sleep(1)
        send = SEND.format(gw=gw).replace("'", "'\"'\"'")
        _guest(home, "beta", f"python3 -c '{send}' beta-real")
        # beta takes alpha's address (and later its MAC) and tries to send as alpha.
        _guest(home, "beta", f"ip addr add {a['ip']}/32 dev eth0 && python3 -c '{send}' beta-as-alpha {a['ip']}")
        arp = ARP_CLAIM.format(gw=gw).replace("'", "'\"'\"'")
        _guest(home, "beta", f"python3 -c '{arp}' {a['ip']}")
        _guest(home, "beta", f"ip link set eth0 down && ip link set eth0 address {a['mac']} && ip link set eth0 up"
                             f" && python3 -c '{send}' beta-with-alpha-mac", check=False)
        _guest(home, "alpha", f"python3 -c '{send}' alpha-real")
        time.sleep(2)
    finally:
        listener.kill()
        listener.wait()
    lines = got.read_text().splitlines() if got.exists() else []
    assert f"{b['ip']} beta-real" in lines and f"{a['ip']} alpha-real" in lines, lines
    assert not [ln for ln in lines if "beta-as-alpha" in ln or "beta-with-alpha-mac" in ln], lines
    neigh = netns.run(["ip", "neigh", "show", a["ip"]]).out
    assert b["mac"] not in neigh, f"beta's ARP claim for alpha's address was believed: {neigh}"


def test_a_registered_rootfs_gets_its_home_from_the_guest_not_the_host(vm_home: Home, golden_image: Path) -> None:
    home = vm_home
    home.cli("image", "register", "copied", "--rootfs", str(golden_image / "rootfs.ext4"), "--kernel-ref",
             "debian-6.1", check=True, timeout=600)
    home.cli("vm", "create", "--name", "seeded", "--image", "copied", check=True)
    listing = _guest(home, "seeded", "ls -A /root").stdout.split()
    assert {".bashrc", ".profile", ".banger-seeded", ".ssh"} <= set(listing), listing
    _guest(home, "seeded", "echo mine > /root/.bashrc")
    home.cli("vm", "restart", "seeded", check=True)
    assert _guest(home, "seeded", "cat /root/.bashrc").stdout == "mine\n", "seeding happens once, not every boot"
