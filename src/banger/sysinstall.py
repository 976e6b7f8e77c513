"""``banger system install | status | restart | uninstall``: banger as two services, owner and root helper.

What an install writes (``prefix`` is ``/`` for a real install; tests use a directory of their own)::

    <prefix>/etc/banger/install.toml                  root 0644: owner, version, directories
    <prefix>/etc/systemd/system/bangerd-root.service  root helper (root, a short capability set)
    <prefix>/etc/systemd/system/bangerd.service       the owner daemon (User=OWNER, no capabilities)
    <prefix>/var/lib/banger, <prefix>/var/cache/banger   owner 0700
    <prefix>/run/banger-root (root 0711), <prefix>/run/banger (owner 0700): made by bangerd-root at start

Every step is undone if a later one fails; ``uninstall`` keeps VM data unless ``purge``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from banger import __version__, install
from banger.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from banger.host import jail
from banger.host.jail import jail_base

ROOT_UNIT = "bangerd-root.service"
OWNER_UNIT = "bangerd.service"
# What the helper needs and nothing more: links, TAPs and nft (NET_ADMIN); loop and dm ioctls (SYS_ADMIN);
# dm nodes without udev (MKNOD); handing the socket and dm nodes to the owner (CHOWN, FOWNER); reopening
# the owner's 0600 backing files through /proc/self/fd (DAC_OVERRIDE); writing the id map of an owner's
# user namespace (SETUID, SETGID); the jailer's pivot into its chroot and its drop to the owner (SYS_ADMIN,
# SYS_CHROOT, SETUID, SETGID, and MKNOD/CHOWN for /dev/kvm and /dev/net/tun in the jail).
ROOT_CAPS = ("CAP_NET_ADMIN CAP_SYS_ADMIN CAP_MKNOD CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_SETUID CAP_SETGID "
             "CAP_SYS_CHROOT")


def layout_for(prefix: Path, owner: str) -> install.Install:
    """The install record for ``owner`` under ``prefix``."""
    try:
        pw = pwd.getpwnam(owner)
    except KeyError as exc:
        raise NotFound(f"no user named {owner!r}", hint="create the account first, or name an existing one") from exc
    if pw.pw_uid == 0:
        raise InvalidArgument("the owner must be a normal user, not root",
                              hint="as root, banger needs no install: it runs in a single process")
    p = prefix.resolve()
    return install.Install(
        version=__version__, owner=owner, owner_uid=pw.pw_uid, owner_gid=pw.pw_gid,
        config_file=p / "etc/banger/config.toml", state_dir=p / "var/lib/banger", cache_dir=p / "var/cache/banger",
        runtime_dir=p / "run/banger", root_runtime_dir=p / "run/banger-root", units_dir=p / "etc/systemd/system",
    )


def install_path(inst: install.Install) -> Path:
    return inst.config_file.parent / "install.toml"


def exec_start(module: str, inst: install.Install, python: str | None = None) -> list[str]:
    """The ``ExecStart=`` argv of a unit (tests run exactly this, as the unit's user)."""
    return [python or sys.executable, "-m", module, "--install", str(install_path(inst))]


def units(inst: install.Install, python: str | None = None) -> dict[str, str]:
    """The two unit files, by name."""
    root_cmd = shlex.join(exec_start("banger.rootd", inst, python))
    owner_cmd = shlex.join(exec_start("banger.daemon", inst, python))
    groups = [g for g in ("kvm",) if _group_exists(g)]
    root = f"""\
[Unit]
Description=banger root helper: bridge, TAPs, NAT, loop and dm devices for bangerd ({inst.owner})
Before={OWNER_UNIT}

[Service]
Type=simple
ExecStart={root_cmd}
Restart=on-failure
# Jailed Firecrackers are the jailer's children, so they stay in this unit's cgroup: a restart of the helper
# must not take the owner's VMs down with it (the helper itself keeps no state).
KillMode=process
NoNewPrivileges=yes
CapabilityBoundingSet={ROOT_CAPS}
ProtectHome=yes
PrivateTmp=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=multi-user.target
"""
    owner = f"""\
[Unit]
Description=banger daemon: VMs, images, kernels and state, as {inst.owner}
Requires={ROOT_UNIT}
After={ROOT_UNIT} network.target

[Service]
Type=simple
User={inst.owner}
Group={grp.getgrgid(inst.owner_gid).gr_name}
{f"SupplementaryGroups={' '.join(groups)}" if groups else "# no kvm group on this host: VMs run under QEMU TCG"}
ExecStart={owner_cmd}
Restart=on-failure
# VMMs are children of bangerd; a restart re-adopts them, so stopping the daemon must not kill them.
KillMode=process
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
LockPersonality=yes
RestrictRealtime=yes
# No RestrictSUIDSGID=: the seccomp filter applies inside the owner's user namespaces too, where dpkg and
# an OCI flatten make setuid files (owned by subordinate ids) for its images.

[Install]
WantedBy=multi-user.target
"""
    return {ROOT_UNIT: root, OWNER_UNIT: owner}


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def systemd_running() -> bool:
    """Whether systemd is PID 1 here (it is not on these CI machines: tests start the daemons by hand)."""
    return os.path.isdir("/run/systemd/system")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PermissionDenied(f"`banger system {what}` must run as root", hint=f"sudo banger system {what} ...")


@dataclass
class Written:
    inst: install.Install
    units: dict[str, Path]
    started: bool


def do_install(owner: str, prefix: Path = Path("/")) -> Written:
    """Write the install (refusing to overwrite one for another owner); undo everything on failure."""
    _require_root("install")
    inst = layout_for(prefix, owner)
    record = install_path(inst)
    existing = install.read_install(record)
    if existing is not None and existing.owner != owner:
        raise Conflict(f"banger is already installed for {existing.owner} ({record})",
                       hint="`banger system uninstall` first (VM data is kept unless --purge)")
    with contextlib.ExitStack() as undo:
        for d, uid, gid, mode in ((inst.config_file.parent, 0, 0, 0o755), (inst.units_dir, 0, 0, 0o755),
                                  (inst.state_dir, inst.owner_uid, inst.owner_gid, 0o700),
                                  (inst.cache_dir, inst.owner_uid, inst.owner_gid, 0o700)):
            _make_dir(d, uid, gid, mode, undo)
        written: dict[str, Path] = {}
        for name, text in units(inst).items():
            written[name] = _write_root_file(inst.units_dir / name, text, undo)
        _write_root_file(record, inst.to_toml(), undo)
        started = False
        if systemd_running() and prefix.resolve() == Path("/"):
            from banger.host.run import run_sync

            run_sync(["systemctl", "daemon-reload"])
            run_sync(["systemctl", "enable", "--now", ROOT_UNIT, OWNER_UNIT])
            started = True
        undo.pop_all()
    return Written(inst, written, started)


def _make_dir(path: Path, uid: int, gid: int, mode: int, undo: contextlib.ExitStack) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        undo.callback(_rmdir_quiet, made)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _write_root_file(path: Path, text: str, undo: contextlib.ExitStack) -> Path:
    """Atomically (re)write ``path`` as root 0644; undo restores what was there."""
    old = path.read_bytes() if path.is_file() else None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    undo.callback(_restore, path, old)
    return path


def _restore(path: Path, old: bytes | None) -> None:
    if old is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(old)


@dataclass
class Status:
    record: Path
    inst: install.Install | None
    drift: list[str]  # unit files or install.toml values that differ from what this banger would write
    helper_up: bool
    daemon_up: bool


def status(record: Path) -> Status:
    inst = install.read_install(record)
    if inst is None:
        return Status(record, None, [], False, False)
    drift = []
    if inst.version != __version__:
        drift.append(f"install.toml records version {inst.version}, this banger is {__version__}")
    for name, text in units(inst).items():
        path = inst.units_dir / name
        if not path.is_file():
            drift.append(f"{path} is missing")
        elif path.read_text() != text:
            drift.append(f"{path} differs from what `banger system install` writes now")
    return Status(record, inst, drift, answers(inst.root_socket), answers(inst.layout.socket))


def answers(sock_path: Path) -> bool:
    """Whether something accepts connections on ``sock_path`` (a liveness probe; nothing is sent)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(sock_path))
            return True
        except OSError:
            return False


def do_uninstall(record: Path, *, purge: bool) -> list[Path]:
    """Stop the services (under systemd), remove units and install.toml; ``purge`` removes state and cache.

    Refused while the owner daemon still answers and systemd cannot stop it: VMs would be orphaned.
    """
    _require_root("uninstall")
    inst = install.read_install(record)
    if inst is None:
        raise NotFound(f"no system install recorded at {record}")
    if systemd_running() and inst.units_dir == Path("/etc/systemd/system"):
        from banger.host.run import run_sync

        run_sync(["systemctl", "disable", "--now", OWNER_UNIT, ROOT_UNIT], check=False)
    if answers(inst.layout.socket):
        raise Conflict(f"bangerd still answers on {inst.layout.socket}",
                       hint="stop it first (`banger daemon stop`, or stop bangerd.service), then uninstall")
    removed = []
    for path in (*(inst.units_dir / u for u in (OWNER_UNIT, ROOT_UNIT)), record):
        if path.exists():
            path.unlink()
            removed.append(path)
    jails = jail_base(inst.state_dir)  # root's, beside the state dir (banger.host.jail)
    if purge and (jails / jail.EXEC_NAME).is_dir():
        for vm_jail in sorted((jails / jail.EXEC_NAME).iterdir()):  # a jailed VMM left running goes with it
            jail.remove(jail.JailPaths(jails, vm_jail.name))
    for d in (inst.runtime_dir, inst.root_runtime_dir, *((inst.state_dir, jails, inst.cache_dir) if purge else ())):
        if d.exists():
            shutil.rmtree(d)
            removed.append(d)
    if purge and inst.config_file.exists():
        inst.config_file.unlink()
        removed.append(inst.config_file)
    for d in _empty_parents(inst):
        removed.append(d)
    return removed


def _empty_parents(inst: install.Install) -> Iterator[Path]:
    """Remove banger's own directories once empty (``/etc/banger``), never a shared one like ``/etc``."""
    d = inst.config_file.parent
    with contextlib.suppress(OSError):
        d.rmdir()
        yield d
