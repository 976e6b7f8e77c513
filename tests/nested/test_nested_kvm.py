"""Firecracker and QEMU+KVM, for real: banger inside a KVM host VM (see banger.testing.nested).

With the default runtime `auto` the boot probe picks Firecracker; every VM-facing command is then run the
way a user on a KVM host would, and afterwards nothing is left in the KVM host. The same for
`--runtime qemu` (`-accel kvm`). Firecracker boots in a row: test_nested_boots.py.
"""

from __future__ import annotations

import pytest

from banger.testing.nested import KvmHost, assert_nothing_left, inner_ok

pytestmark = [pytest.mark.system, pytest.mark.timeout(3600)]

REPO = (
    "rm -rf /root/src && mkdir -p /root/src && cd /root/src && git init -q -b main && "
    "printf 'one\\n' > a.txt && git add a.txt && "
    "git -c user.name=T -c user.email=t@example.test commit -q -m first"
)


def test_firecracker_end_to_end(kvm_host: KvmHost) -> None:
    created = inner_ok(kvm_host, "vm", "create", "--name", "fc")
    assert "Firecracker with KVM" in created and "runs under its jailer" in created, created
    # Its root directory is the jail's (readlink shows "/" after the jailer's pivot; the inode tells).
    jailed = kvm_host.sh("pid=$(pgrep -x firecracker | head -1); [ \"$(stat -Lc %d:%i /proc/$pid/root)\" = "
                         "\"$(stat -c %d:%i /root/inner/state-jail/firecracker/*/root)\" ] && echo jailed",
                         check=False).stdout.strip()
    assert jailed == "jailed", "the inner Firecracker is not in its jail"
    shown = inner_ok(kvm_host, "vm", "show", "fc", "--json")
    assert '"runtime": "firecracker"' in shown
    assert kvm_host.banger("vm", "exec", "fc", "--", "true").returncode == 0

    assert kvm_host.banger("vm", "run", "--rm", "--", "sh", "-c", "exit 7").returncode == 7

    kvm_host.sh(REPO)
    ran = kvm_host.banger("vm", "run", "/root/src", "--name", "ws", "--", "sh", "-c",
                          "echo two >> /root/repo/a.txt && echo new > /root/repo/b.txt")
    assert ran.returncode == 0, ran.stderr
    applied = kvm_host.sh("rm -rf /root/clone && git clone -q /root/src /root/clone && "
                          "BANGER_HOME=/root/inner /opt/banger/bin/banger vm workspace export ws | "
                          "git -C /root/clone apply && cat /root/clone/a.txt /root/clone/b.txt")
    assert applied.stdout == "one\ntwo\nnew\n"

    inner_ok(kvm_host, "vm", "stop", "fc")
    assert "stopped" in inner_ok(kvm_host, "vm", "show", "fc")
    # Ctrl-Alt-Del reached the guest: systemd shut down and the kernel rebooted (reboot=k ends Firecracker).
    fc_dir = kvm_host.sh("BANGER_HOME=/root/inner /opt/banger/bin/banger vm show fc --json | "
                         "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"vm_dir\"])'").stdout.strip()
    console = kvm_host.sh(f"tail -n 30 {fc_dir}/console.log").stdout
    assert "reboot: Restarting system" in console or "Reached target" in console, console
    inner_ok(kvm_host, "vm", "start", "fc")
    assert kvm_host.banger("vm", "exec", "fc", "--", "true").returncode == 0
    inner_ok(kvm_host, "vm", "delete", "fc", "ws")
    assert_nothing_left(kvm_host)


def test_qemu_with_kvm_end_to_end(kvm_host: KvmHost) -> None:
    ran = kvm_host.banger("vm", "run", "--runtime", "qemu", "--rm", "--", "sh", "-c", "exit 7")
    assert ran.returncode == 7, ran.stderr
    assert "runtime qemu with KVM" in ran.stderr, ran.stderr
    inner_ok(kvm_host, "vm", "create", "--runtime", "qemu", "--name", "qk")
    cmdline = kvm_host.sh("tr '\\0' ' ' < /proc/$(pgrep -f 'qemu-system-x86_64 -name qk' | head -1)/cmdline").stdout
    assert "-accel kvm" in cmdline, cmdline
    inner_ok(kvm_host, "vm", "stop", "qk")
    inner_ok(kvm_host, "vm", "start", "qk")
    assert kvm_host.banger("vm", "exec", "qk", "--", "true").returncode == 0
    inner_ok(kvm_host, "vm", "delete", "qk")
    assert_nothing_left(kvm_host)
