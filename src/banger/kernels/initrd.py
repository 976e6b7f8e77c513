"""The initrd of banger's kernels: busybox, the guest's boot modules and ``files/init`` as a gzip newc cpio."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from importlib import resources

from banger.kernels.cpio import CpioWriter
from banger.kernels.modules import MODULE_SUFFIXES

# Every busybox applet files/init calls, plus a few that make the banger.debug=1 shell usable.
APPLETS = (
    "sh", "cat", "mount", "umount", "insmod", "ip", "sleep", "mkdir", "hostname", "uname", "switch_root",
    "poweroff", "reboot", "sync", "tr", "setsid", "cttyhack",
    "ls", "dmesg", "lsmod", "ps", "grep", "less", "vi", "df", "ln", "rm", "cp", "mv", "echo", "test",
)
MODULES_LOAD = "lib/banger/modules.load"
DIRS = ("bin", "sbin", "dev", "etc", "proc", "sys", "run", "tmp", "newroot", "lib", "lib/banger", "lib/modules")


@dataclass(frozen=True)
class BootModule:
    path: str  # relative to lib/modules/<version>, e.g. "kernel/fs/ext4/ext4.ko" (stored uncompressed)
    elf: bytes


def init_script() -> bytes:
    """The init script shipped in the package (``kernels/files/init``)."""
    return resources.files("banger.kernels").joinpath("files/init").read_bytes()


def _stored_path(path: str) -> str:
    for suffix in MODULE_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".ko"
    return path


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def initrd_cpio(busybox: bytes, version: str, modules: list[BootModule], init: bytes | None = None) -> bytes:
    """The uncompressed cpio archive: ``/init``, ``/bin/busybox`` + applet links, modules in load order."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in DIRS:
        w.directory(d, 0o1777 if d == "tmp" else 0o755)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        w.symlink(f"bin/{applet}", "busybox")
    made = set(DIRS)
    load = []
    for mod in modules:
        rel = f"{version}/{_stored_path(mod.path)}"
        for parent in _parents(f"lib/modules/{rel}"):
            if parent not in made:
                w.directory(parent)
                made.add(parent)
        w.file(f"lib/modules/{rel}", mod.elf)
        load.append(rel)
    w.file(MODULES_LOAD, ("\n".join(load) + "\n").encode())
    w.file("init", init if init is not None else init_script(), 0o755)
    w.close()
    return buf.getvalue()


def build_initrd(busybox: bytes, version: str, modules: list[BootModule], init: bytes | None = None) -> bytes:
    """The gzip-compressed initrd (deterministic: fixed mtimes, no file name in the gzip header)."""
    return gzip.compress(initrd_cpio(busybox, version, modules, init), compresslevel=9, mtime=0)
