"""bangerd-root's ``jail_firecracker``: the real helper starts the real jailer for the owner, and refuses each
argument outside banger's config (one test per validator), over its real socket as a compromised owner
daemon would ask."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.errors import PermissionDenied
from banger.host import jail as jails
from banger.host.firecracker import FirecrackerAPI
from banger.host.privileged import RemotePrivileged
from banger.testing.firecracker import firecracker_binary, jailer_binary
from banger.testing.netns import NetNS
from banger.testing.system import SystemInstall, made_user

VM_ID = "0123456789ab"


@pytest.fixture(scope="module")
def system(banger_test_cache: Path) -> Iterator[SystemInstall]:
    firecracker, jailer = firecracker_binary(banger_test_cache), jailer_binary(banger_test_cache)
    with made_user() as owner, NetNS() as ns:
        sysi = SystemInstall(owner.pw_name, netns=ns.name)
        try:
            sysi.install()
            config = sysi.inst.config_file
            old = config.read_text() if config.exists() else ""
            config.write_text(f'{old}\nfirecracker_bin = "{firecracker}"\njailer_bin = "{jailer}"\n')
            sysi.start_helper()
            sysi.test_cache = banger_test_cache  # type: ignore[attr-defined]
            yield sysi
        finally:
            sysi.close()


def ask(sysi: SystemInstall, op: str, fds: tuple[int, ...] = (), **args: Any) -> Any:
    return asyncio.run(RemotePrivileged(sysi.inst.root_socket).call(op, fds, **args))


def owned_console(sysi: SystemInstall, owner: bool = True) -> int:
    path = sysi.inst.state_dir / ("console.log" if owner else "root-console.log")
    path.touch()
    if owner:
        os.chown(path, sysi.inst.owner_uid, sysi.inst.owner_gid)
    return os.open(path, os.O_WRONLY | os.O_APPEND)


def owned_file(sysi: SystemInstall, name: str, owner: bool = True) -> Path:
    path = sysi.inst.state_dir / name
    path.write_bytes(b"\0" * 4096)
    if owner:
        os.chown(path, sysi.inst.owner_uid, sysi.inst.owner_gid)
    return path


def good_args(sysi: SystemInstall, vm_id: str = VM_ID) -> dict[str, Any]:
    inst = sysi.inst
    cache = sysi.test_cache  # type: ignore[attr-defined]
    return {"vm_id": vm_id, "jailer": os.path.realpath(jailer_binary(cache)),
            "exec_file": os.path.realpath(firecracker_binary(cache)), "uid": inst.owner_uid,
            "gid": inst.owner_gid, "chroot_base": str(jails.jail_base(inst.state_dir)), "netns": sysi.netns,
            "files": [], "devices": []}


def test_the_owner_gets_a_jailed_firecracker_running_as_itself(system: SystemInstall) -> None:
    """The helper makes the jail itself, root's all the way down to ``root`` (which the jailer hands to the
    owner only after its pivot), links in the file the owner passed as a descriptor, and the jail goes with
    ``remove_jail``."""
    inst = system.inst
    kernel = owned_file(system, "vmlinux-test")
    console, kfd = owned_console(system), os.open(kernel, os.O_RDONLY)
    where = jails.JailPaths(jails.jail_base(inst.state_dir), VM_ID)
    try:
        pid = ask(system, "jail_firecracker", (console, kfd),
                  **{**good_args(system), "files": [["vmlinux", str(kernel)]]})
    finally:
        os.close(console)
        os.close(kfd)
    try:
        uids = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")]
        assert uids[0].split()[1:] == [str(inst.owner_uid)] * 4
        assert jails.process_in(pid, where.root)
        info = asyncio.run(FirecrackerAPI(where.root / "firecracker.sock").get("/"))
        assert info["id"] == VM_ID
        for d in (where.base.parent, where.base, where.base / "firecracker", where.dir):
            st = d.lstat()
            assert st.st_uid == 0 and st.st_mode & 0o022 == 0, f"{d} is not root's alone"
        assert (where.root / "vmlinux").stat().st_ino == kernel.stat().st_ino  # the very inode, linked
    finally:
        asyncio.run(jails.kill_jailed(pid, where.root, "test firecracker"))
    ask(system, "remove_jail", vm_id=VM_ID, chroot_base=str(where.base))
    assert not where.dir.exists()
    kernel.unlink()


REFUSALS: dict[str, dict[str, Any]] = {
    "a VM id that is not banger's": {"vm_id": "../../../etc"},
    "another jailer": {"jailer": "/bin/sh"},
    "another exec file": {"exec_file": "/bin/sh"},
    "the VMM as root": {"uid": 0},
    "the VMM in root's group": {"gid": 0},
    "a chroot base outside the state dir": {"chroot_base": "/srv/jailer"},
    "the state dir itself as chroot base": {"chroot_base": "STATE"},
    "a network namespace that does not exist": {"netns": "banger-nope"},
    "a network namespace by path": {"netns": "../../proc/1/ns/net"},
    "a disk device": {"devices": ["/dev/sda"]},
    "a dm device outside banger's names": {"devices": ["/dev/mapper/cryptroot"]},
    "too many devices": {"devices": ["/dev/loop0"] * 9},
    "a file named without a descriptor": {"files": [["vmlinux", "/etc/shadow"]]},
    "an unknown argument": {"argv": ["--no-seccomp"]},
}


def _nothing_made(sysi: SystemInstall) -> None:
    base = jails.jail_base(sysi.inst.state_dir)
    assert jails.jailed_pids(base) == {}
    assert not (base / "firecracker").exists() or not any((base / "firecracker").iterdir())
    assert not Path("/etc/firecracker").exists() and not Path("/etc/dev/kvm").exists()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_helper_refuses_out_of_policy_jail_arguments(system: SystemInstall, case: str) -> None:
    args = {**good_args(system), **REFUSALS[case]}
    if args["chroot_base"] == "STATE":
        args["chroot_base"] = str(system.inst.state_dir)
    console = owned_console(system)
    try:
        with pytest.raises(PermissionDenied, match="bangerd-root refuses"):
            ask(system, "jail_firecracker", (console,), **args)
    finally:
        os.close(console)
    _nothing_made(system)


@pytest.mark.parametrize("case", ["no descriptor", "root's console", "a file outside the state dir",
                                  "a file of root's", "a descriptor of another file than named",
                                  "a file name banger does not use", "a name given twice"])
def test_helper_refuses_consoles_and_files_it_cannot_trust(system: SystemInstall, case: str) -> None:
    args = {**good_args(system)}
    mine = owned_file(system, "mine.img")
    fds: list[int] = []
    try:
        if case != "no descriptor":
            fds.append(owned_console(system, owner=case != "root's console"))
        if case == "a file outside the state dir":
            fds.append(os.open("/etc/hostname", os.O_RDONLY))
            args["files"] = [["vmlinux", "/etc/hostname"]]
        elif case == "a file of root's":
            theirs = owned_file(system, "roots.img", owner=False)
            fds.append(os.open(theirs, os.O_RDONLY))
            args["files"] = [["vda", str(theirs)]]
        elif case == "a descriptor of another file than named":
            fds.append(os.open("/etc/hostname", os.O_RDONLY))
            args["files"] = [["vda", str(mine)]]
        elif case == "a file name banger does not use":
            fds.append(os.open(mine, os.O_RDONLY))
            args["files"] = [["../../etc/passwd", str(mine)]]
        elif case == "a name given twice":
            fds += [os.open(mine, os.O_RDONLY), os.open(mine, os.O_RDONLY)]
            args["files"] = [["vda", str(mine)], ["vda", str(mine)]]
        with pytest.raises(PermissionDenied, match="bangerd-root refuses"):
            ask(system, "jail_firecracker", tuple(fds), **args)
    finally:
        for fd in fds:
            os.close(fd)
    _nothing_made(system)


def test_a_jail_base_the_owner_could_change_is_never_used(system: SystemInstall) -> None:
    """Were the base (or its parent) writable by the owner, a swapped-in symlink could send the jailer's
    copy and chown onto a host file: the helper stops before the jailer runs, and makes nothing."""
    inst = system.inst
    base = jails.jail_base(inst.state_dir)
    base.mkdir(mode=0o711, exist_ok=True)
    os.chown(base, inst.owner_uid, inst.owner_gid)
    console = owned_console(system)
    try:
        with pytest.raises(Exception, match="must be root's"):
            ask(system, "jail_firecracker", (console,), **good_args(system))
    finally:
        os.close(console)
        os.chown(base, 0, 0)
    _nothing_made(system)


def _as_owner(sysi: SystemInstall, *argv: str) -> subprocess.CompletedProcess[str]:
    inst = sysi.inst
    return subprocess.run(list(argv), user=inst.owner_uid, group=inst.owner_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=30)


def test_no_device_node_of_a_jail_outlives_it_and_removing_a_jail_stops_its_vmm(system: SystemInstall) -> None:
    """The jail's /dev is a tmpfs of its own: the owner (who owns the jail's root once the jailer ran) cannot
    hard-link a node out of it, neither the disk's nor the jailer's userfaultfd; remove_jail kills the VMM
    it finds still running in the jail before removing it."""
    inst = system.inst
    backing = owned_file(system, "disk.img", owner=True)
    loop = ask(system, "attach_loop", (os.open(backing, os.O_RDWR),), read_only=False, path=str(backing))
    where = jails.JailPaths(jails.jail_base(inst.state_dir), VM_ID)
    console = owned_console(system)
    try:
        pid = ask(system, "jail_firecracker", (console,), **{**good_args(system), "devices": [loop]})
        try:
            # The VMM sees its nodes; the owner reaches them only through the VMM's /proc/PID/root (the
            # tmpfs is mounted in the helper's mount namespace, the jailer's copies it), and cannot link one.
            seen = Path(f"/proc/{pid}/root/dev")
            assert (seen / Path(loop).name).exists() and (seen / "userfaultfd").exists()
            for name in (Path(loop).name, "userfaultfd", "kvm"):
                linked = _as_owner(system, "ln", str(seen / name), str(inst.state_dir / f"kept-{name}"))
                assert linked.returncode != 0, f"the owner kept a link to the jail's /dev/{name}"
                assert not (inst.state_dir / f"kept-{name}").exists()
            ask(system, "remove_jail", vm_id=VM_ID, chroot_base=str(where.base))  # the VMM still running
            assert not Path(f"/proc/{pid}").exists() or not jails.process_in(pid, where.root)
            assert not where.dir.exists()
        finally:
            if where.dir.exists():
                ask(system, "remove_jail", vm_id=VM_ID, chroot_base=str(where.base))
    finally:
        os.close(console)
        ask(system, "detach_loop", device=loop)
        backing.unlink()


def test_helper_refuses_another_existing_network_namespace(system: SystemInstall) -> None:
    with NetNS() as other:
        console = owned_console(system)
        try:
            with pytest.raises(PermissionDenied, match="the one bangerd-root itself runs in"):
                ask(system, "jail_firecracker", (console,), **{**good_args(system), "netns": other.name})
        finally:
            os.close(console)
    _nothing_made(system)


def test_helper_refuses_a_dm_device_by_banger_s_name_alone(system: SystemInstall) -> None:
    """Another install (or root's own banger) names its devices banger-* too: the name is not enough, the
    device must sit on loops the helper attached over this state dir. (These machines' kernels have no
    device-mapper, so the device here is one that does not exist: what has no loops under it is refused.)"""
    console = owned_console(system)
    try:
        with pytest.raises(PermissionDenied, match="over loops the helper attached"):
            ask(system, "jail_firecracker", (console,), **{**good_args(system),
                                                            "devices": ["/dev/mapper/banger-fedcba987654"]})
    finally:
        os.close(console)
    _nothing_made(system)
