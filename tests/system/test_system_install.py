"""A normal user drives banger through a system install: bangerd as the owner, bangerd-root as root.

Both daemons are started exactly as the written units' ExecStart= lines say (the owner one as the unit's
User=), the helper inside a namespace this test makes. The owner daemon first runs in the host's namespace
for `kernel pull` and `image build` (they need the package mirror; every bridge, TAP and rule is still made
by the helper, inside the namespace), then moves into the namespace for the VMs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from banger.host.ext4 import debugfs
from banger.host.jail import jail_base
from banger.testing.netns import NetNS
from banger.testing.repos import committed_repo
from banger.testing.system import SystemInstall, made_user

CONFIG = """\
runtime = "qemu"
firecracker_bin = "/nonexistent/firecracker"
tap_pool_size = 1
dns_listen = "127.0.0.1:42071"
[vm_defaults]
vcpu = 2
memory_mib = 768
disk_size = "2G"
"""


def _copy_owned(src: Path, root: Path, rel: str, uid: int, gid: int) -> None:
    """Copy a test-cache artifact to ``root/rel`` as the owner's own (the cache itself stays root's)."""
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-r", "--sparse=always", str(src), str(dest)], check=True)
    for path in (*dest.rglob("*"), dest, *(p for p in dest.parents if p.is_relative_to(root))):
        os.lchown(path, uid, gid)


def _processes_of(uid: int, name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
            if comm == name and int(uids[0]) == uid:
                pids.append(int(entry.name))
    return pids


def _ns(ns: NetNS, *argv: str) -> str:
    return ns.run(list(argv)).out


def test_a_normal_user_runs_sandboxes_through_the_system_install(
        default_kernel: Path, golden_image: Path, banger_test_cache: Path) -> None:
    with made_user() as owner, NetNS() as ns:
        sysi = SystemInstall(owner.pw_name, netns=ns.name)
        try:
            _run(sysi, ns, owner.pw_uid, owner.pw_gid, banger_test_cache)
        except BaseException:
            print(sysi.logs())
            raise
        finally:
            sysi.close()


def _run(sysi: SystemInstall, ns: NetNS, uid: int, gid: int, cache: Path) -> None:
    sysi.install()
    inst = sysi.inst
    units = [inst.units_dir / "bangerd-root.service", inst.units_dir / "bangerd.service"]
    verify = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    inst.config_file.write_text(CONFIG)
    # The owner's caches start with the kernel package and the mise tarball the test cache already
    # fetched (no second download of either); the golden image itself is built from scratch, mmdebstrap and
    # all, as root of a user namespace bangerd-root maps onto the owner's subordinate ids.
    for deb in (cache / "debs").glob("*.deb"):
        _copy_owned(deb, inst.cache_dir, f"kernels/{deb.name}", uid, gid)
    for tarball in (cache / "golden-build/downloads").glob("mise-*.tgz"):
        _copy_owned(tarball, inst.cache_dir, f"images/downloads/{tarball.name}", uid, gid)

    sysi.start_helper()
    sysi.start_owner_daemon(netns=False)
    sysi.cli("kernel", "pull", "debian-6.1", netns=False, check=True, timeout=900)
    built = sysi.cli("image", "build", netns=False, check=True, timeout=1800)
    assert "image debian-bookworm ready" in built.stderr
    assert "bootstrapping debian bookworm (mmdebstrap)" in (inst.state_dir / "bangerd.log").read_text()
    rootfs = inst.state_dir / "images/debian-bookworm/rootfs.ext4"
    shadow = asyncio.run(debugfs(rootfs, "stat /etc/shadow"))
    assert "User:     0   Group:    42" in shadow and "Mode:  0640" in shadow, shadow  # root:shadow, as Debian
    assert "Mode:  04755" in asyncio.run(debugfs(rootfs, "stat /usr/bin/sudo"))
    # A bundle round trip as the owner: export, then pull the file back under another name.
    bundles = sysi.prefix / "bundles"
    bundles.mkdir()
    os.chown(bundles, uid, gid)
    sysi.cli("image", "export", "debian-bookworm", "-o", str(bundles), netns=False, check=True, timeout=900)
    bundle = next(bundles.glob("*.tar.zst"))
    sysi.cli("image", "pull", str(bundle), "--name", "from-bundle", netns=False, check=True, timeout=900)
    assert "from-bundle" in sysi.cli("image", "list", netns=False, check=True).stdout
    sysi.cli("image", "delete", "from-bundle", netns=False, check=True)
    shutil.rmtree(bundles)
    sysi.stop(sysi.daemon)
    for d in (inst.state_dir, inst.cache_dir):  # nothing left owned by the subordinate ids
        strays = [str(p) for p in (d, *d.rglob("*")) if p.lstat().st_uid != uid]
        assert strays == [], f"not the owner's after the build: {strays[:10]}"
    sysi.start_owner_daemon()

    # A sandbox as the owner: root in the guest, the VMM the owner's.
    ran = sysi.cli("vm", "run", "--rm", "--", "id", "-u", timeout=600)
    assert ran.returncode == 0 and ran.stdout.strip() == "0", ran.stderr

    repo = committed_repo(sysi.prefix / "repo")
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(repo)], check=True)
    ran = sysi.cli("vm", "run", str(repo), "--name", "ws", "--", "sh", "-c",
                   "cd /root/repo && echo changed >> src/a.py && exit 3", timeout=600)
    assert ran.returncode == 3, ran.stderr
    qemu = _processes_of(uid, "qemu-system-x86")
    assert qemu, "the VM's QEMU runs as the owner"
    assert not _processes_of(0, "qemu-system-x86") or all(
        "ws" not in Path(f"/proc/{p}/cmdline").read_text() for p in _processes_of(0, "qemu-system-x86"))
    patch = sysi.cli("vm", "workspace", "export", "ws", check=True).stdout
    clone = sysi.prefix / "work/clone"
    clone.parent.mkdir()
    os.chown(clone.parent, uid, gid)
    as_owner = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    subprocess.run([*as_owner, "git", "clone", "-q", str(repo), str(clone)], check=True, env=sysi.env)
    subprocess.run([*as_owner, "git", "-C", str(clone), "apply"], input=patch, text=True, check=True, env=sysi.env)
    assert (clone / "src/a.py").read_text() == "print('a')\nchanged\n"
    status = subprocess.run([*as_owner, "git", "-C", str(clone), "status", "--porcelain"], capture_output=True,
                            text=True, check=True, env=sysi.env).stdout
    assert status.strip() == "M src/a.py"

    ports = sysi.cli("vm", "ports", "ws", check=True).stdout
    assert "22" in ports and "sshd" in ports, ports
    ip = sysi.cli("vm", "show", "ws", "--json", check=True).stdout.split('"ip": "')[1].split('"')[0]
    assert _ns(ns, "dig", "+short", "-p", "42071", "@127.0.0.1", "ws.vm").strip() == ip

    sysi.cli("vm", "stop", "ws", check=True, timeout=300)
    assert not _processes_of(uid, "qemu-system-x86")
    sysi.cli("vm", "start", "ws", check=True, timeout=600)
    assert sysi.cli("vm", "exec", "ws", "--", "cat /root/repo/src/a.py", check=True).stdout.endswith("changed\n")
    sysi.cli("vm", "delete", "ws", check=True, timeout=300)

    # The helper dies with a create's request in hand (stopped, so the request waits in its socket, then
    # killed): the create fails naming bangerd-root and leaves no VM, process or file; what it could not
    # release without the helper (the TAP it took) goes at the next create, with no daemon restart.
    log = inst.state_dir / "bangerd.log"
    seen = log.read_text().count('"stage": "network"')
    os.kill(sysi.helper.pid, signal.SIGSTOP)
    creating = sysi.cli_background("vm", "create", "--name", "nohelper")
    deadline = time.monotonic() + 120
    while log.read_text().count('"stage": "network"') == seen and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    # `system restart` refuses while that create is in flight, and with --force goes on to say what to do
    # where systemd is not PID 1 (as here).
    refused = sysi.cli("system", "restart")
    assert refused.returncode != 0 and "operation(s) are running" in refused.stderr, refused.stderr
    assert "--force" in refused.stderr
    forced = sysi.cli("system", "restart", "--force")
    assert forced.returncode == 1 and "systemd is not running here" in forced.stdout, forced
    sysi.stop(sysi.helper, signal.SIGKILL)
    _out, err = creating.communicate(timeout=300)
    assert creating.returncode != 0 and "bangerd-root hung up during" in err, err
    assert "nohelper" not in sysi.cli("vm", "list", check=True).stdout
    assert not _processes_of(uid, "qemu-system-x86")
    assert not any((inst.state_dir / "vms").iterdir())
    # With the helper still gone, a create fails at once and says what to do.
    failed = sysi.cli("vm", "create", "--name", "nohelper", timeout=300)
    assert failed.returncode != 0 and "bangerd-root is not answering" in failed.stderr, failed.stderr
    assert "systemctl start bangerd-root" in failed.stderr
    sysi.start_helper()
    ran = sysi.cli("vm", "run", "--rm", "--", "true", timeout=600)
    assert ran.returncode == 0, ran.stderr

    # Nothing of the VMs is left once the daemons stop (pool TAPs go with the owner daemon).
    sysi.stop(sysi.daemon)
    assert not _processes_of(uid, "qemu-system-x86")
    assert "bgt-" not in _ns(ns, "ip", "-o", "link")
    assert str(inst.state_dir) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    sysi.stop(sysi.helper)

    removed = sysi.root_cli("system", "uninstall", "--purge", check=True)
    assert "removed" in removed.stdout
    for d in (inst.config_file.parent, inst.state_dir, jail_base(inst.state_dir), inst.cache_dir, inst.runtime_dir,
              inst.root_runtime_dir):
        assert not d.exists(), f"{d} is left after uninstall --purge"
    assert not any(inst.units_dir.iterdir())
    shutil.rmtree(sysi.prefix / "repo")
    shutil.rmtree(sysi.prefix / "work")
