"""bangerd-root's ``jail_firecracker``: the real helper starts the real jailer for the owner, and refuses each
argument outside banger's config (one test per validator), over its real socket as a compromised owner
daemon would ask."""

from __future__ import annotations

import asyncio
import os
import shutil
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


def owned_jail(sysi: SystemInstall, vm_id: str = VM_ID) -> jails.JailPaths:
    """What the owner daemon makes before asking: its own chroot directory under <state>/jail."""
    inst = sysi.inst
    where = jails.JailPaths(jails.jail_base(inst.state_dir), vm_id)
    where.root.mkdir(parents=True, exist_ok=True)
    for path in (where.base, where.base / "firecracker", where.dir, where.root):
        os.chown(path, inst.owner_uid, inst.owner_gid)
    return where


def owned_console(sysi: SystemInstall, owner: bool = True) -> int:
    path = sysi.inst.state_dir / ("console.log" if owner else "root-console.log")
    path.touch()
    if owner:
        os.chown(path, sysi.inst.owner_uid, sysi.inst.owner_gid)
    return os.open(path, os.O_WRONLY | os.O_APPEND)


def good_args(sysi: SystemInstall) -> dict[str, Any]:
    inst = sysi.inst
    cache = sysi.test_cache  # type: ignore[attr-defined]
    return {"vm_id": VM_ID, "jailer": os.path.realpath(jailer_binary(cache)),
            "exec_file": os.path.realpath(firecracker_binary(cache)), "uid": inst.owner_uid,
            "gid": inst.owner_gid, "chroot_base": str(jails.jail_base(inst.state_dir)), "netns": sysi.netns,
            "devices": []}


def test_the_owner_gets_a_jailed_firecracker_running_as_itself(system: SystemInstall) -> None:
    where = owned_jail(system)
    console = owned_console(system)
    try:
        pid = ask(system, "jail_firecracker", (console,), **good_args(system))
    finally:
        os.close(console)
    try:
        uids = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")]
        assert uids[0].split()[1:] == [str(system.inst.owner_uid)] * 4
        assert jails.process_in(pid, where.root)
        info = asyncio.run(FirecrackerAPI(where.root / "firecracker.sock").get("/"))
        assert info["id"] == VM_ID
    finally:
        asyncio.run(jails.kill_jailed(pid, where.root, "test firecracker"))
    # Everything in the jail is the owner's, so the owner daemon can remove it without the helper.
    assert all(p.lstat().st_uid in (system.inst.owner_uid, 0) for p in where.dir.rglob("*"))
    assert {p.lstat().st_uid for p in where.root.iterdir()} <= {system.inst.owner_uid, 0}
    shutil.rmtree(where.dir)


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
    "an unknown argument": {"argv": ["--no-seccomp"]},
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_helper_refuses_out_of_policy_jail_arguments(system: SystemInstall, case: str) -> None:
    owned_jail(system)
    args = {**good_args(system), **REFUSALS[case]}
    if args["chroot_base"] == "STATE":
        args["chroot_base"] = str(system.inst.state_dir)
    console = owned_console(system)
    try:
        with pytest.raises(PermissionDenied, match="bangerd-root refuses"):
            ask(system, "jail_firecracker", (console,), **args)
    finally:
        os.close(console)
    assert jails.jailed_pids(jails.jail_base(system.inst.state_dir)) == {}


@pytest.mark.parametrize("case", ["no descriptor", "root's console", "a symlinked jail", "a jail of root's"])
def test_helper_refuses_consoles_and_jails_it_cannot_trust(system: SystemInstall, case: str) -> None:
    where = owned_jail(system, "ba5eba11cafe")
    args = {**good_args(system), "vm_id": "ba5eba11cafe"}
    fds: tuple[int, ...] = ()
    if case != "no descriptor":
        fds = (owned_console(system, owner=case != "root's console"),)
    if case == "a symlinked jail":
        shutil.rmtree(where.root)
        where.root.symlink_to("/etc")
    elif case == "a jail of root's":
        os.chown(where.root, 0, 0)
    try:
        with pytest.raises(PermissionDenied, match="bangerd-root refuses"):
            ask(system, "jail_firecracker", fds, **args)
    finally:
        for fd in fds:
            os.close(fd)
        if where.root.is_symlink():
            where.root.unlink()
        shutil.rmtree(where.dir, ignore_errors=True)
    assert not Path("/etc/firecracker").exists() and not Path("/etc/dev/kvm").exists()
