"""bangerd-root: who may connect, and one refusal per validator, against the real helper process.

The helper is started exactly as its unit's ExecStart= says, inside a namespace this module creates; the
requests go over its real socket (descriptors as SCM_RIGHTS), so what is refused is what a compromised
owner daemon would be refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.errors import PermissionDenied
from banger.host.privileged import RemotePrivileged
from banger.testing.netns import NetNS
from banger.testing.system import SystemInstall, made_user

NOBODY = 65534


@pytest.fixture(scope="module")
def system() -> Iterator[SystemInstall]:
    with made_user() as owner, NetNS() as ns:
        sysi = SystemInstall(owner.pw_name, netns=ns.name)
        try:
            sysi.install()
            sysi.start_helper()
            sysi.start_owner_daemon()
            yield sysi
        finally:
            sysi.close()


def ask(sysi: SystemInstall, op: str, fds: tuple[int, ...] = (), **args: Any) -> Any:
    return asyncio.run(RemotePrivileged(sysi.inst.root_socket).call(op, fds, **args))


PROBE = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.strerror})); sys.exit()
try:  # a refused peer may be answered and hung up on before it has finished sending
    s.sendall(sys.argv[2].encode() + b"\\n"); s.shutdown(socket.SHUT_WR)
except OSError:
    pass
print(json.dumps({"reply": s.recv(65536).decode(errors="replace")}))
"""


def probe_as(uid: int, sock: Path, payload: str) -> dict[str, str]:
    # Only the standard library: Debian's own interpreter, which any user may run (a venv's may not be).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    proc = subprocess.run([python, "-c", PROBE, str(sock), payload], user=uid, group=uid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_uid_65534_is_refused_at_both_sockets(system: SystemInstall) -> None:
    inst = system.inst
    helper_req = json.dumps({"op": "nat_vm_ids", "args": {}})
    rpc_req = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}})
    # First wall: modes (helper socket 0600 owner's; the owner daemon's runtime dir 0700).
    assert probe_as(NOBODY, inst.root_socket, helper_req) == {"connect": "Permission denied"}
    assert probe_as(NOBODY, inst.layout.socket, rpc_req) == {"connect": "Permission denied"}
    # Second wall, with the first opened up for the test: each daemon checks SO_PEERCRED itself.
    os.chmod(inst.root_socket, 0o666)
    os.chmod(inst.runtime_dir, 0o711)
    os.chmod(inst.layout.socket, 0o666)
    try:
        helper = probe_as(NOBODY, inst.root_socket, helper_req)
        daemon = probe_as(NOBODY, inst.layout.socket, rpc_req)
    finally:
        os.chmod(inst.root_socket, 0o600)
        os.chmod(inst.runtime_dir, 0o700)
        os.chmod(inst.layout.socket, 0o600)
    assert "serves root and uid" in helper["reply"] and "PermissionDenied" in helper["reply"], helper
    assert "may not use this banger daemon" in daemon["reply"], daemon
    # The owner itself is served by both.
    assert "result" in probe_as(inst.owner_uid, inst.root_socket, helper_req)["reply"]


def _links(sysi: SystemInstall) -> str:
    return subprocess.run(["ip", "netns", "exec", str(sysi.netns), "ip", "-o", "link"], capture_output=True,
                          text=True, check=True).stdout


REFUSALS: dict[str, tuple[str, dict[str, Any]]] = {
    "TAP outside banger's prefix": ("create_tap", {"name": "eth7", "bridge": "banger0", "owner_uid": None}),
    "TAP for another user": ("create_tap", {"name": "bgt-0123456789", "bridge": "banger0", "owner_uid": 0}),
    "address outside the CIDR": ("add_vm_nat", {"vm_id": "0123456789ab", "guest_ip": "10.9.9.9",
                                                "out_iface": None}),
    "filter for an address outside the CIDR": ("add_tap_filter", {
        "vm_id": "0123456789ab", "tap": "bgt-0123456789", "mac": "02:00:00:00:00:01", "guest_ip": "192.168.1.1"}),
    "another bridge": ("ensure_bridge", {"name": "docker0", "ip": "172.30.0.1", "prefixlen": 24}),
    "the bridge with another address": ("ensure_bridge", {"name": "banger0", "ip": "10.0.0.1", "prefixlen": 8}),
    "another nftables table": ("add_vm_nat", {"vm_id": "0123456789ab", "guest_ip": "172.30.0.9", "out_iface": None,
                                              "table": "filter"}),
    "a loop by path": ("attach_loop", {"path": "/etc/shadow", "read_only": True}),
    "a loop with no descriptor": ("attach_loop", {"read_only": True}),
    "a dm snapshot over a disk": ("dm_create_snapshot", {"name": "banger-0123456789ab", "origin": "/dev/sda",
                                                         "cow": "/dev/loop0", "sectors": 8}),
    "a dm device outside banger's names": ("dm_remove", {"name": "cryptroot"}),
    "loops under another directory": ("loops_under", {"directory": "/"}),
    "resolver routing to another server": ("set_resolved_link_dns", {"link": "banger0", "server": "8.8.8.8:53",
                                                                     "domain": "vm"}),
    "resolver routing on another link": ("set_resolved_link_dns", {"link": "eth0", "server": "127.0.0.1:42069",
                                                                   "domain": "vm"}),
    "an operation not in the table": ("run", {"argv": ["sh", "-c", "id"]}),
    "an id map for a root process": ("map_userns", {"pid": os.getpid()}),
    "an id map for init": ("map_userns", {"pid": 1}),
    "an id map with the caller's own ranges": ("map_userns", {"pid": os.getpid(), "uid_map": "0 0 4294967295"}),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_helper_refuses_out_of_policy_arguments(system: SystemInstall, case: str) -> None:
    op, args = REFUSALS[case]
    before = _links(system)
    with pytest.raises(PermissionDenied, match="bangerd-root refuses"):
        ask(system, op, **args)
    assert _links(system).count("\n") == before.count("\n")


def _owner_file(sysi: SystemInstall, name: str, size: int = 1 << 20) -> Path:
    """A file of the owner's under the state dir (what the owner daemon would pass)."""
    path = sysi.inst.state_dir / name
    path.write_bytes(b"\0" * size)
    os.chown(path, sysi.inst.owner_uid, sysi.inst.owner_gid)
    return path


def test_helper_refuses_a_descriptor_of_a_file_outside_the_state_dir(system: SystemInstall) -> None:
    fd = os.open("/etc/shadow", os.O_RDONLY)
    try:
        with pytest.raises(PermissionDenied, match="only files under the state dir"):
            ask(system, "attach_loop", (fd,), read_only=True, path="/etc/shadow")
        # Nor does naming a file under the state dir help: the claim must be the descriptor's own file.
        decoy = _owner_file(system, "decoy.img", 4096)
        try:
            with pytest.raises(PermissionDenied, match="not that file"):
                ask(system, "attach_loop", (fd,), read_only=True, path=str(decoy))
        finally:
            decoy.unlink()
    finally:
        os.close(fd)


def test_helper_refuses_to_detach_a_loop_it_did_not_attach(system: SystemInstall, tmp_path: Path) -> None:
    backing = tmp_path / "not-bangers.img"
    backing.write_bytes(b"\0" * (1 << 20))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        with pytest.raises(PermissionDenied, match="only loops over files under"):
            ask(system, "detach_loop", device=device)
        assert subprocess.run(["losetup", device], capture_output=True).returncode == 0  # still attached
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_helper_refuses_a_writable_loop_over_a_read_only_descriptor(system: SystemInstall) -> None:
    path = _owner_file(system, "ro-probe.img")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(PermissionDenied, match="opened read-only"):
            ask(system, "attach_loop", (fd,), read_only=False, path=str(path))
    finally:
        os.close(fd)
        path.unlink()


def test_helper_attaches_an_owner_file_passed_as_a_descriptor_and_makes_owner_taps(system: SystemInstall) -> None:
    inst = system.inst
    path = _owner_file(system, "loop-probe.img")
    fd = os.open(path, os.O_RDONLY)
    try:
        device = ask(system, "attach_loop", (fd,), read_only=True, path=str(path))
    finally:
        os.close(fd)
    try:
        assert device in ask(system, "loops_under", directory=str(inst.state_dir))
    finally:
        ask(system, "detach_loop", device=device)
        path.unlink()
    assert device not in ask(system, "loops_under", directory=str(inst.state_dir))
    ask(system, "ensure_bridge", name="banger0", ip="172.30.0.1", prefixlen=24)
    ask(system, "create_tap", name="bgt-00000000aa", bridge="banger0", owner_uid=None)
    try:
        show = ["ip", "netns", "exec", str(system.netns), "ip", "-d", "link", "show", "bgt-00000000aa"]
        detail = subprocess.run(show, capture_output=True, text=True, check=True).stdout
        assert f"user {system.owner}" in detail
    finally:
        ask(system, "delete_tap", name="bgt-00000000aa")


def _owner_process(sysi: SystemInstall, *argv: str) -> subprocess.Popen[bytes]:
    owner = sysi.inst.owner_uid
    return subprocess.Popen(list(argv), user=owner, group=sysi.inst.owner_gid, extra_groups=[],
                            stdin=subprocess.DEVNULL)


def _wait_for(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_helper_maps_only_an_owner_process_alone_in_a_fresh_user_namespace(system: SystemInstall) -> None:
    host_ns = os.readlink("/proc/self/ns/user")
    plain = _owner_process(system, "sleep", "30")  # the owner's, but in the host's user namespace
    # The owner's, in a user namespace it already mapped itself (uid 0 inside = the owner).
    mapped = _owner_process(system, "unshare", "--user", "--map-root-user", "sleep", "30")
    # Only its gid map written (setgroups denied, uid map empty): the helper must not finish it half-way.
    half = _owner_process(system, "unshare", "--user", "--map-group=0", "sleep", "30")
    try:
        _wait_for(lambda: os.readlink(f"/proc/{mapped.pid}/ns/user") != host_ns
                  and Path(f"/proc/{mapped.pid}/uid_map").read_text().strip() != "")
        _wait_for(lambda: Path(f"/proc/{half.pid}/gid_map").read_text().strip() != "")
        with pytest.raises(PermissionDenied, match="in the host's user namespace"):
            ask(system, "map_userns", pid=plain.pid)
        with pytest.raises(PermissionDenied, match="already mapped"):
            ask(system, "map_userns", pid=mapped.pid)
        with pytest.raises(PermissionDenied, match="already mapped"):
            ask(system, "map_userns", pid=half.pid)
        assert Path(f"/proc/{mapped.pid}/uid_map").read_text().split() == ["0", str(system.inst.owner_uid), "1"]
        assert Path(f"/proc/{half.pid}/uid_map").read_text().strip() == ""
    finally:
        for proc in (plain, mapped, half):
            proc.kill()
            proc.wait()


USERNS_AS_OWNER = """
import asyncio, sys
from pathlib import Path
from banger.host import userns
from banger.host.privileged import RemotePrivileged
helper = RemotePrivileged(Path(sys.argv[1]))
asyncio.run(userns.run(["sh", "-c", sys.argv[2]], helper.map_userns, on_line=print))
"""


def test_an_owner_namespace_mapped_by_the_helper_sets_file_owners_from_the_subordinate_block(
        system: SystemInstall) -> None:
    """The whole path an owner's image build takes, confined as bangerd's unit confines it."""
    from banger.host import userns

    inst = system.inst
    work = inst.state_dir / "userns-probe"
    work.mkdir()
    os.chown(work, inst.owner_uid, inst.owner_gid)
    script = (f"cd {work} && touch a b && chown 1000:1000 a && chown {userns.OWNER_INSIDE}:{userns.OWNER_INSIDE} b"
              " && id -u && grep CapEff /proc/self/status")
    argv = ["setpriv", f"--reuid={inst.owner_uid}", f"--regid={inst.owner_gid}", "--clear-groups",
            "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all",
            sys.executable, "-c", USERNS_AS_OWNER, str(inst.root_socket), script]
    try:
        proc = subprocess.run(argv, env=system.env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "0"
        ids = userns.id_map_for(inst.owner_uid)
        assert (os.stat(work / "a").st_uid, os.stat(work / "a").st_gid) == (ids.subuid + 1000, ids.subgid + 1000)
        assert (os.stat(work / "b").st_uid, os.stat(work / "b").st_gid) == (inst.owner_uid, inst.owner_gid)
    finally:
        shutil.rmtree(work)
