"""User namespaces for the owner's image work: file owners kept exact without root on the host.

An OCI flatten and the golden build must write files owned by root, by ``_apt``, by uid 1000 and so on.
As root that is plain ``chown``; as the owner it happens inside a user namespace whose ids map onto the
owner's first block of subordinate ids (``/etc/subuid``, ``/etc/subgid``):

- ids 0-65535 inside are the block (the layout mmdebstrap's unshare mode uses), so what is uid 0 inside
  is a host id nobody else has;
- id 65536 inside is the owner itself, so the namespace's root may still read and write the owner's own
  staging directories and caches (its capabilities there cover every inode whose ids are mapped), and
  hands the finished images back with :data:`OWNER_INSIDE`.

The map cannot be written by the owner: only one id of its own would be allowed, and ``newuidmap`` is
setuid, which ``NoNewPrivileges=yes`` on bangerd's unit turns off. So the child (``python -m
banger.host.userns``) unshares, says so on a pipe and waits; the daemon asks the privileged seam to map
its pid (bangerd-root under a system install, which checks the pid is the owner's, in a fresh namespace
of its own, and writes only the owner's block); then the child becomes uid 0 there and execs the work.
A new user namespace starts with every capability in it, whatever bangerd's (empty) bounding set is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.errors import HostError

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
BLOCK = 65536  # ids 0..65535 inside: all a Debian tree or an OCI image uses
OWNER_INSIDE = BLOCK  # the owner's own uid and gid, seen from inside
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class IdMap:
    """The owner and its first subordinate uid and gid blocks (each at least :data:`BLOCK` long)."""

    owner_uid: int
    owner_gid: int
    subuid: int
    subgid: int

    def uid_map(self) -> str:
        return f"0 {self.subuid} {BLOCK}\n{OWNER_INSIDE} {self.owner_uid} 1\n"

    def gid_map(self) -> str:
        return f"0 {self.subgid} {BLOCK}\n{OWNER_INSIDE} {self.owner_gid} 1\n"


def _first_block(path: Path, user: str, uid: int) -> int:
    """The start of ``user``'s first block in ``path`` (entries name the user or its uid)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[1].isdigit() and parts[2].isdigit():
            if int(parts[2]) >= BLOCK:
                return _checked_block(path, user, uid, int(parts[1]))
    raise HostError(
        f"{user} has no block of {BLOCK} subordinate ids in {path}, so images cannot keep their file owners",
        hint=f"as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user} "
             "(pick a range no other user has)",
    )


def _checked_block(path: Path, user: str, uid: int, start: int) -> int:
    """Refuse a block that holds a real account (root, the owner, anyone in passwd): root of the namespace
    must be nobody on the host."""
    taken = sorted(pw.pw_uid for pw in pwd.getpwall() if start <= pw.pw_uid < start + BLOCK)
    if start == 0 or taken or start <= uid < start + BLOCK:
        raise HostError(f"{user}'s subordinate ids in {path} ({start}-{start + BLOCK - 1}) include "
                        f"{'uid 0' if start == 0 else f'the accounts {taken}' if taken else f'its own uid {uid}'}",
                        hint="give it a block no account uses: usermod --del-subuids/--add-subuids (and subgids)")
    return start


def id_map_for(uid: int) -> IdMap:
    """The map for the user ``uid``: its primary group and first subordinate blocks."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError as exc:
        raise HostError(f"uid {uid} has no account, so it has no subordinate ids") from exc
    return IdMap(uid, pw.pw_gid, _first_block(SUBUID, pw.pw_name, uid), _first_block(SUBGID, pw.pw_name, uid))


def open_process(pid: int) -> int:
    """A descriptor of ``/proc/PID``: every later read and write goes through it, so a pid reused meanwhile
    by another process fails (ESRCH) instead of reaching that process."""
    return os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _read_at(proc_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def process_uid(proc_fd: int) -> int:
    """The real uid of the process, refusing one whose four uids differ (setuid, mid-transition)."""
    uids = next(line.split()[1:] for line in _read_at(proc_fd, "status").splitlines() if line.startswith("Uid:"))
    if len(set(uids)) != 1:
        raise HostError(f"the process has mixed uids {uids}")
    return int(uids[0])


def user_ns(proc_fd: int) -> str:
    """The process's user namespace (``user:[inode]``)."""
    return os.readlink("ns/user", dir_fd=proc_fd)


def maps_written(proc_fd: int) -> bool:
    """True once either id map of the process's namespace has been written."""
    return any(_read_at(proc_fd, name).strip() for name in ("uid_map", "gid_map"))


def write_map(proc_fd: int, ids: IdMap) -> None:
    """Write ``ids`` as the id maps of the process's (new, unmapped) namespace; needs root on the host."""
    for name, text in (("uid_map", ids.uid_map()), ("gid_map", ids.gid_map())):
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def newidmap_argv(pid: int, ids: IdMap) -> list[list[str]]:
    """The newuidmap/newgidmap calls that write the same map (for an owner outside any unit)."""
    return [["newuidmap", str(pid), "0", str(ids.subuid), str(BLOCK), str(OWNER_INSIDE), str(ids.owner_uid), "1"],
            ["newgidmap", str(pid), "0", str(ids.subgid), str(BLOCK), str(OWNER_INSIDE), str(ids.owner_gid), "1"]]


Mapper = Callable[[int], Awaitable[None]]


async def run(argv: Sequence[str | os.PathLike[str]], mapper: Mapper, *,
              on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> str:
    """Run ``argv`` as root of a new user namespace that ``mapper(pid)`` maps; its stdout lines go to
    ``on_line``. Returns stderr; HostError naming the command if it fails, times out or never starts."""
    from banger.host import run as host_run  # the one spawner

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        proc = await host_run.start(
            [sys.executable, "-m", "banger.host.userns", str(ready_w), str(go_r), "--", *map(str, argv)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(ready_w, go_r))
    except BaseException:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        raise
    os.close(ready_w)
    os.close(go_r)
    try:
        ready = await asyncio.to_thread(os.read, ready_r, 1)
        if ready == b"1":
            await mapper(proc.pid)
            os.write(go_w, b"1")
        os.close(go_w)
        go_w = -1
        err = await asyncio.wait_for(_drain(proc, on_line), timeout)
    except BaseException:
        # The child leads its own process group, and what it runs stays in it (mmdebstrap's tools too).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    finally:
        os.close(ready_r)
        if go_w >= 0:
            os.close(go_w)
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-12:]
        raise HostError(f"`{os.fspath(argv[0])}` in the owner's user namespace exited {proc.returncode}"
                        + (":\n" + "\n".join(tail) if tail else ""))
    return err


async def _drain(proc: asyncio.subprocess.Process, on_line: Callable[[str], None] | None) -> str:
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    try:
        async for raw in proc.stdout:
            if on_line is not None:
                on_line(raw.decode(errors="replace").rstrip("\n"))
        err = (await errors).decode(errors="replace")
    finally:
        errors.cancel()
    await proc.wait()
    return err


def _enter(ready_fd: int, go_fd: int, argv: list[str]) -> None:
    """The child: unshare, wait for the map, become root inside, exec ``argv``. Single-threaded here."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        sys.exit(f"banger: cannot make a user namespace: {os.strerror(err)} "
                 "(user namespaces must be enabled: sysctl user.max_user_namespaces)")
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    if os.read(go_fd, 1) != b"1":
        sys.exit("banger: the user namespace was not mapped")
    os.close(go_fd)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # Die with the daemon (set after the uid change, which clears it; kept across exec): what this execs
    # is ``unshare --pid --kill-child``, so everything below goes too (banger.images.rootless).
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        sys.exit(f"banger: prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # the daemon was already gone (we were reparented)
        sys.exit("banger: the daemon exited before its user namespace was mapped")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _enter(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4:])
