"""A daemon that died mid-way leaks nothing: the next one sweeps VMMs, rules, devices and scratch dirs.

Everything is made for real, the way a crash leaves it: a QEMU process started for a VM dir of this state
dir but never recorded in a handles.json (the crash came between spawn and record), NAT rules and a TAP
filter for a VM that is not running, a loop device over a file in the state dir that no VM names, and the
staging/trash directories of interrupted image, kernel and workspace operations. The daemon runs inside
a network namespace the test makes, so the nftables rules are the namespace's own.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from banger import ipam
from banger.testing.daemon import Home
from banger.testing.netns import NetNS


def test_the_next_daemon_removes_what_a_crashed_one_left(tmp_path: Path) -> None:
    with NetNS() as ns:
        home = Home(netns=ns.name)
        try:
            home.layout.ensure()
            _check_cleaned(home, ns, _leave_a_mess(home, ns))
        finally:
            home.cleanup()


def _leave_a_mess(home: Home, ns: NetNS) -> dict[str, object]:
    vm_dir = home.layout.vms_dir / "0123456789ab"
    vm_dir.mkdir(parents=True)
    qemu = subprocess.Popen(ns.argv(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-nographic",
                                     "-qmp", f"unix:{vm_dir}/qmp.sock,server=on,wait=off"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    script = ("add table inet banger\n"
              "add chain inet banger postrouting { type nat hook postrouting priority srcnat; policy accept; }\n"
              'add rule inet banger postrouting ip saddr 172.30.0.9 masquerade comment "banger:deadbeef0001"\n'
              "add table bridge banger\n"
              "add chain bridge banger prerouting { type filter hook prerouting priority -200; policy accept; }\n"
              'add rule bridge banger prerouting iifname "bgt-dead" ether saddr != 02:00:00:00:00:09 drop '
              'comment "banger:deadbeef0001"\n')
    ns.run(["nft", "-f", "-"], input=script.encode())
    backing = home.layout.state_dir / "orphan.img"
    backing.write_bytes(b"\0" * (1 << 20))
    loop = ns.run(["losetup", "--find", "--show", str(backing)]).out.strip()
    # Two leftover TAPs: one of this daemon (its tag), one of another daemon in the same namespace.
    ns.run(["ip", "link", "add", "banger0", "type", "bridge"])
    ours = ipam.tap_name(ipam.daemon_tag(str(home.layout.state_dir)), "leftover")
    theirs = ipam.tap_name(ipam.daemon_tag("/some/other/state"), "leftover")
    for tap in (ours, theirs):
        ns.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    scratch = [home.layout.images_dir / ".new-img-1234", home.layout.images_dir / ".trash-old-5678",
               home.layout.kernels_dir / ".stage-debian-6.1-9abc", vm_dir / "workspace-xyz", vm_dir / ".config-1"]
    for d in scratch:
        d.mkdir(parents=True)
        (d / "partial").write_bytes(b"half")
    deadline = time.monotonic() + 10
    while not (vm_dir / "qmp.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu.poll() is None, "the orphan QEMU must be running before the daemon starts"
    return {"qemu": qemu, "loop": loop, "scratch": scratch, "taps": (ours, theirs)}


def _check_cleaned(home: Home, ns: NetNS, mess: dict[str, object]) -> None:
    started = time.monotonic()
    home.start_daemon()
    qemu = mess["qemu"]
    assert isinstance(qemu, subprocess.Popen)
    assert qemu.wait(timeout=10) is not None, "the orphaned VMM was killed"
    rules = json.loads(ns.run(["nft", "-j", "list", "ruleset"]).out)["nftables"]
    assert not [r for r in rules if "rule" in r and "deadbeef0001" in r["rule"].get("comment", "")]
    loops = ns.run(["losetup", "--list", "--noheadings", "-O", "NAME"]).out.split()
    assert mess["loop"] not in loops, "the loop device no VM names was detached"
    assert not [d for d in mess["scratch"] if Path(str(d)).exists()]  # type: ignore[attr-defined]
    ours, theirs = mess["taps"]  # type: ignore[misc]
    links = ns.run(["ip", "-o", "link", "show"]).out
    assert f" {ours}:" not in links and f" {theirs}:" in links, "only this daemon's TAP was swept"
    with home.client() as c:
        assert c.ping().pid == home.daemon_pid()
    assert time.monotonic() - started < 30
