"""Boot glue for a flattened container tree, so it boots with banger's kernel + initrd and serves SSH.

Decision: images with systemd (``/lib/systemd/systemd``) get the same units as banger's golden image
(``banger-network``, ``banger-config``, sshd drop-in) enabled by symlink. Images without systemd (typical
containers) get ``/sbin/banger-init``, a small ``/bin/sh`` PID 1 that mounts the work disk, re-applies the
network and starts sshd if present; it becomes ``init=`` (``extra["cmdline_init"]``, and ``/sbin/init``
when the image has none). An image with neither systemd nor ``/bin/sh`` is refused. Every path is
written through :func:`~banger.images.oci_layers.resolve_in_root`, so image symlinks cannot redirect a
write to the host. SSH needs ``/usr/sbin/sshd`` in the image; without it the VM boots but has no SSH.
banger-agent, being static, needs nothing from the image: it is installed whenever banger has a built one
(``images.agent.host_binary``), with its unit under systemd, else started by banger-init.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from banger.errors import IntegrityError, InvalidArgument
from banger.images import agent as agent_build
from banger.images.oci_layers import Escape, resolve_in_root
from banger.progress import Reporter

SYSTEMD = "lib/systemd/systemd"
BANGER_INIT = "/sbin/banger-init"
UNITS = "etc/systemd/system"
MOUNTPOINTS = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "tmp": 0o1777, "root": 0o700}


@dataclass
class BootPlan:
    """What the glue decided: the init to boot and facts for the manifest."""

    init: str  # "/lib/systemd/systemd" or "/sbin/banger-init"
    systemd: bool
    notes: list[str] = field(default_factory=list)
    sshd: bool = True  # the image has /usr/sbin/sshd (without it a VM is reached only through banger-agent)


def glue_file(name: str) -> bytes:
    """A file shipped in ``banger/images/files``."""
    return (resources.files("banger.images") / "files" / name).read_bytes()


def inside(tree: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``rel`` resolved inside ``tree``; IntegrityError when the image's symlinks point it outside."""
    try:
        return resolve_in_root(tree, rel, follow_last=follow_last)
    except Escape:
        raise IntegrityError(
            f"the image's symlinks send /{rel} outside its root filesystem",
            hint="the image is malformed or hostile; nothing was kept",
        ) from None


def exists(tree: Path, rel: str) -> bool:
    """Whether ``/rel`` exists in the image (symlinks followed inside the tree)."""
    try:
        return os.path.lexists(resolve_in_root(tree, rel))
    except Escape:
        return False


def mkdirs(tree: Path, rel: str, mode: int = 0o755) -> Path:
    """``mkdir -p /rel`` inside the image, root-owned."""
    done = ""
    path = tree
    for part in [p for p in rel.split("/") if p]:
        done = f"{done}/{part}".lstrip("/")
        path = inside(tree, done)
        if not path.is_dir():
            if os.path.lexists(path):
                path.unlink()
            path.mkdir(mode=mode)
            _own(path)
    return path


def put(tree: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``/rel`` in the image (replacing a file or symlink there), root-owned with ``mode``."""
    parent_rel, _, name = rel.strip("/").rpartition("/")
    target = mkdirs(tree, parent_rel) / name
    if os.path.lexists(target):
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    _own(target)
    os.chmod(target, mode)


def link(tree: Path, rel: str, target: str) -> None:
    """Create symlink ``/rel`` -> ``target`` in the image, replacing what is there."""
    parent_rel, _, name = rel.strip("/").rpartition("/")
    path = mkdirs(tree, parent_rel) / name
    if os.path.lexists(path):
        path.unlink()
    os.symlink(target, path)


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        os.lchown(path, 0, 0)


def plan_boot(tree: Path) -> BootPlan:
    """Decide how the image boots: its systemd, or banger-init on its ``/bin/sh``."""
    if exists(tree, SYSTEMD):
        notes = [f"the image has no {what}: the work disk may not mount at /root"
                 for what, rel in (("udev", "lib/systemd/systemd-udevd"), ("dbus", "usr/bin/dbus-daemon"))
                 if not exists(tree, rel)]
        return BootPlan("/" + SYSTEMD, True, notes)
    if not exists(tree, "bin/sh"):
        raise InvalidArgument(
            "the image has neither systemd nor /bin/sh, so banger cannot start it",
            hint="pull an image with a shell (e.g. debian, ubuntu, alpine) or with systemd",
        )
    return BootPlan(BANGER_INIT, False)


def install_glue(tree: Path, reporter: Reporter, agent: Path | None = None) -> BootPlan:
    """Add banger's boot glue to ``tree`` and return the plan (init, notes). ``agent``: a static
    banger-agent to install (started by its unit under systemd, by banger-init otherwise)."""
    plan = plan_boot(tree)
    for name, mode in MOUNTPOINTS.items():
        mkdirs(tree, name, mode)
        os.chmod(inside(tree, name), mode)
    put(tree, "etc/fstab", glue_file("fstab"))
    put(tree, "usr/local/sbin/banger-network", glue_file("banger-network"), 0o755)
    put(tree, "usr/local/sbin/banger-config", glue_file("banger-config"), 0o755)
    _install_sshd(tree, plan, reporter)
    if agent is not None:
        put(tree, agent_build.GUEST_BINARY, agent.read_bytes(), 0o755)
    if plan.systemd:
        _install_units(tree, agent=agent is not None)
    else:
        put(tree, BANGER_INIT, glue_file("oci-banger-init"), 0o755)
    if not exists(tree, "sbin/init"):
        link(tree, "sbin/init", plan.init)
    for note in plan.notes:
        reporter.note(note)
    return plan


def _install_sshd(tree: Path, plan: BootPlan, reporter: Reporter) -> None:
    if not exists(tree, "usr/sbin/sshd"):
        plan.sshd = False
        plan.notes.append("the image has no /usr/sbin/sshd: VMs from it boot but cannot be reached over SSH")
        return
    put(tree, "etc/ssh/sshd_config.d/banger.conf", glue_file("sshd-banger.conf"))
    ssh_dir = inside(tree, "etc/ssh")
    # Host keys baked into the image would be shared by every VM; each VM's comes from the daemon.
    for key in ssh_dir.glob("ssh_host_*"):
        key.unlink()
        reporter.log(f"removed baked-in SSH host key /etc/ssh/{key.name}")


def _install_units(tree: Path, *, agent: bool) -> None:
    for unit in ("banger-network.service", "banger-config.service"):
        put(tree, f"{UNITS}/{unit}", glue_file(unit))
    if agent:
        put(tree, f"{UNITS}/{agent_build.UNIT}", glue_file(agent_build.UNIT))
        link(tree, f"{UNITS}/sysinit.target.wants/{agent_build.UNIT}", f"../{agent_build.UNIT}")
    link(tree, f"{UNITS}/multi-user.target.wants/banger-network.service", "../banger-network.service")
    link(tree, f"{UNITS}/network-online.target.wants/banger-network.service", "../banger-network.service")
    link(tree, f"{UNITS}/multi-user.target.wants/banger-config.service", "../banger-config.service")
    link(tree, f"{UNITS}/ssh.service.wants/banger-config.service", "../banger-config.service")
    for rel in ("lib/systemd/system/ssh.service", "usr/lib/systemd/system/ssh.service"):
        if exists(tree, rel):
            link(tree, f"{UNITS}/multi-user.target.wants/ssh.service", "/" + rel)
            break
