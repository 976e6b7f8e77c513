"""``banger doctor``: read-only host diagnostics, one PASS/WARN/FAIL line per check with a fix hint.

Runs in the CLI process so it works even when bangerd cannot start; it only reads (the state database
is opened read-only and never migrated).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

from banger.api import Check
from banger.config import Config
from banger.errors import BangerError
from banger.host.run import run_sync, which
from banger.paths import Layout
from banger.store.db import LATEST, open_readonly, schema_version

FIRECRACKER_RANGE = ((1, 8), (2, 0))  # supported: 1.8 <= version < 2.0


def _ok(name: str, detail: str, required: bool = True) -> Check:
    return Check(name=name, status="PASS", detail=detail, required=required)


def _bad(name: str, detail: str, fix: str, required: bool = True) -> Check:
    return Check(name=name, status="FAIL" if required else "WARN", detail=detail, fix=fix, required=required)


def check_arch() -> Check:
    arch = platform.machine()
    if arch == "x86_64":
        return _ok("architecture", arch)
    return _bad("architecture", f"{arch} is not supported", "banger's kernels and images are x86_64 only")


def check_kvm() -> Check:
    dev = Path("/dev/kvm")
    if not dev.exists():
        return _bad("kvm", "/dev/kvm is missing", "enable virtualisation (or nested virtualisation); "
                    "banger falls back to QEMU TCG emulation, which is much slower", required=False)
    if not os.access(dev, os.R_OK | os.W_OK):
        return _bad("kvm", "/dev/kvm is not readable and writable by you", "add yourself to the kvm group",
                    required=False)
    return _ok("kvm", "/dev/kvm is present (whether it boots guests is decided by the runtime probe)", False)


def parse_firecracker_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def check_firecracker(cfg: Config) -> Check:
    path = which(cfg.firecracker_bin) if not os.path.isabs(cfg.firecracker_bin) else cfg.firecracker_bin
    fix = ("`scripts/setup.sh --firecracker` installs the pinned official v1.12.1 (or set firecracker_bin to a "
           "1.8-1.x binary); without it banger uses QEMU")
    if not path or not os.access(path, os.X_OK):
        return _bad("firecracker", f"{cfg.firecracker_bin!r} not found", fix, required=False)
    try:
        version = parse_firecracker_version(run_sync([path, "--version"], timeout=10).out)
    except BangerError as exc:
        return _bad("firecracker", f"{path} --version failed: {exc.message}", fix, required=False)
    if version is None:
        return _bad("firecracker", f"{path}: cannot read its version", fix, required=False)
    low, high = FIRECRACKER_RANGE
    text = ".".join(map(str, version))
    if not (low <= version[:2] < high):
        return _bad("firecracker", f"{path} is v{text}, outside the supported 1.8 - 1.x", fix, required=False)
    return _ok("firecracker", f"{path} v{text}", required=False)


def check_tool(name: str, tool: str, fix: str, *, required: bool = True, version_args: list[str] | None = None,
               why: str = "") -> Check:
    path = which(tool)
    if not path:
        return _bad(name, f"{tool} not found" + (f" ({why})" if why else ""), fix, required)
    detail = path
    if version_args:
        try:
            res = run_sync([path, *version_args], timeout=10, check=False)
            first = (res.out or res.err).strip().splitlines()
            detail = f"{path} ({first[0][:80]})" if first else path
        except BangerError:
            pass
    return _ok(name, detail, required)


def check_mkfs_d() -> Check:
    fix = "apt-get install e2fsprogs (1.43 or newer)"
    path = which("mkfs.ext4")
    if not path:
        return _bad("e2fsprogs", "mkfs.ext4 not found", fix)
    res = run_sync([path, "-V"], check=False, timeout=10)
    m = re.search(r"(\d+)\.(\d+)", res.err + res.out)
    if not m or (int(m.group(1)), int(m.group(2))) < (1, 43):
        return _bad("e2fsprogs", "mkfs.ext4 is too old for `-d` (needs 1.43+)", fix)
    return _ok("e2fsprogs", f"{path} {m.group(0)} (supports mkfs.ext4 -d)")


def check_loop() -> Check:
    if Path("/dev/loop-control").exists():
        return _ok("loop devices", "/dev/loop-control present", required=False)
    return _bad("loop devices", "/dev/loop-control missing", "modprobe loop", required=False)


def check_dm() -> Check:
    if Path("/dev/mapper/control").exists() and which("dmsetup"):
        return _ok("device-mapper", "available: Firecracker root disks use dm snapshots", required=False)
    return _bad("device-mapper", "not available: root disks use a qcow2 overlay (QEMU) or a sparse copy",
                "apt-get install dmsetup and modprobe dm_snapshot for faster Firecracker root disks",
                required=False)


def check_store(layout: Layout) -> Check:
    if not layout.db.exists():
        return _ok("state store", f"{layout.db} not created yet (bangerd creates it on first start)")
    try:
        conn = open_readonly(layout.db)
        try:
            version = schema_version(conn)
            vms = conn.execute("SELECT count(*) FROM vms").fetchone()[0] if version else 0
        finally:
            conn.close()
    except Exception as exc:  # any failure to read is the finding itself
        return _bad("state store", f"{layout.db}: {exc}", "move the file aside; bangerd makes a fresh one")
    if version > LATEST:
        return _bad("state store", f"schema v{version} is newer than this banger (v{LATEST})", "upgrade banger")
    return _ok("state store", f"{layout.db} schema v{version}, {vms} VM(s)")


def check_defaults(layout: Layout, cfg: Config) -> list[Check]:
    image_dir = layout.images_dir / cfg.default_image_name
    kernel_dir = layout.kernels_dir / cfg.default_kernel
    out = []
    if (image_dir / "rootfs.ext4").exists():
        out.append(_ok("default image", f"{cfg.default_image_name} present", required=False))
    else:
        buildable = bool(which("mmdebstrap"))
        out.append(_bad("default image", f"{cfg.default_image_name} not present yet"
                        + ("; it can be built here" if buildable else ""),
                        "`banger image build` (needs mmdebstrap) or `banger image pull NAME`", required=False))
    if (kernel_dir / "vmlinux").exists():
        out.append(_ok("default kernel", f"{cfg.default_kernel} present", required=False))
    else:
        out.append(_bad("default kernel", f"{cfg.default_kernel} not present yet; it is pulled on first use",
                        f"`banger kernel pull {cfg.default_kernel}`", required=False))
    return out


def check_vm_names(cfg: Config) -> Check:
    from banger.host import resolved

    state = resolved.available()
    if not cfg.dns_listen:
        return _bad("vm names", "the .vm DNS server is off (dns_listen is empty)", "set dns_listen", required=False)
    if state:
        return _ok("vm names", f"<name>.vm routed to {cfg.dns_listen} via systemd-resolved", required=False)
    return _bad("vm names", f"<name>.vm is served on {cfg.dns_listen} only: {state.reason}",
                "use `banger vm ssh NAME`, or systemd-resolved (apt-get install systemd-resolved) for NAME.vm names",
                required=False)


def check_mode() -> list[Check]:
    """How banger runs here: a system install (and its drift), single-process as root, or not usable yet."""
    from banger import paths, sysinstall

    if paths.home_override():
        return [_ok("mode", f"single-process in BANGER_HOME={os.environ.get('BANGER_HOME')}")]
    try:
        st = sysinstall.status(paths.install_file())
    except BangerError as exc:
        return [_bad("mode", exc.message, exc.hint or "reinstall: banger system install --owner USER")]
    if st.inst is None:
        if os.geteuid() == 0:
            return [_ok("mode", "single-process as root (no system install)")]
        return [_bad("mode", f"uid {os.geteuid()} has no banger: there is no system install ({st.record})",
                     f"as root: banger system install --owner {_user_name()}")]
    inst = st.inst
    checks = [_ok("mode", f"system install for {inst.owner} (uid {inst.owner_uid}), {st.record}")]
    checks.append(_ok("install drift", "units and install.toml match this banger") if not st.drift else
                  _bad("install drift", "; ".join(st.drift), f"as root: banger system install --owner {inst.owner}",
                       required=False))
    for name, up, unit in (("bangerd-root", st.helper_up, sysinstall.ROOT_UNIT),
                           ("bangerd", st.daemon_up, sysinstall.OWNER_UNIT)):
        checks.append(_ok(name, "answering") if up else
                      _bad(name, "not answering", f"systemctl start {unit}", required=False))
    return checks


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return "USER"


def check_jailer(cfg: Config) -> Check:
    """The jailer as ``jailer = auto|true|false`` will use it (a WARN unless ``jailer = true`` needs it)."""
    if cfg.jailer is False:
        return _ok("jailer", "jailer = false: Firecracker runs unjailed", required=False)
    path = which(cfg.jailer_bin) if not os.path.isabs(cfg.jailer_bin) else cfg.jailer_bin
    fix = "`scripts/setup.sh --firecracker` installs the pinned v1.12.1 jailer beside Firecracker"
    if path is None or not os.access(path, os.X_OK):
        return _bad("jailer", f"{cfg.jailer_bin!r} not found: Firecracker would run unjailed", fix,
                    required=cfg.jailer is True)
    return _ok("jailer", f"{path}: Firecracker runs chrooted under it (jailer = {cfg.jailer!r})", required=False)


def check_subids() -> Check:
    """A normal user's image builds and registry pulls need a block of subordinate ids (banger.host.userns)."""
    from banger.errors import HostError
    from banger.host import userns

    if os.geteuid() == 0:
        return _ok("subordinate ids", "running as root: image work needs none", required=False)
    try:
        ids = userns.id_map_for(os.geteuid())
    except HostError as exc:
        return _bad("subordinate ids", exc.message, exc.hint or "", required=False)
    return _ok("subordinate ids", f"uids {ids.subuid}+{userns.BLOCK}, gids {ids.subgid}+{userns.BLOCK} for image "
               "builds and registry pulls", required=False)


def run_checks(cfg: Config, layout: Layout) -> list[Check]:
    """Every check, in the order shown."""
    checks: list[Callable[[], Check | list[Check]]] = [
        check_mode,
        check_arch,
        check_kvm,
        lambda: check_firecracker(cfg),
        lambda: check_jailer(cfg),
        check_subids,
        lambda: check_tool("qemu", cfg.qemu_bin, "apt-get install qemu-system-x86", required=False,
                           version_args=["--version"]),
        lambda: _vmm_available(cfg),
        check_mkfs_d,
        lambda: check_tool("debugfs", "debugfs", "apt-get install e2fsprogs"),
        lambda: check_tool("qemu-img", "qemu-img", "apt-get install qemu-utils", required=False,
                           why="qcow2 root overlays under QEMU"),
        lambda: check_tool("mmdebstrap", "mmdebstrap", "apt-get install mmdebstrap", required=False,
                           why="needed to build the golden image; pulls work without it"),
        lambda: check_tool("gpgv", "gpgv", "apt-get install gpgv debian-archive-keyring",
                           why="verifies Debian's signed package index for kernels"),
        lambda: check_tool("nft", "nft", "apt-get install nftables", required=False, why="only for --nat"),
        lambda: check_tool("ssh client", "ssh", "apt-get install openssh-client"),
        lambda: check_tool("git", "git", "apt-get install git"),
        check_loop,
        check_dm,
        lambda: check_vm_names(cfg),
        lambda: check_store(layout),
        lambda: check_defaults(layout, cfg),
    ]
    results: list[Check] = []
    for fn in checks:
        got = fn()
        results.extend(got if isinstance(got, list) else [got])
    return results


def _vmm_available(cfg: Config) -> Check:
    if which(cfg.qemu_bin) or which(cfg.firecracker_bin):
        return _ok("vmm", "at least one VMM (firecracker or qemu) is installed")
    return _bad("vmm", "neither firecracker nor qemu-system-x86_64 is installed",
                "apt-get install qemu-system-x86 (works everywhere) or install Firecracker (needs KVM)")
