"""``manifest.json`` of an installed kernel: where it came from and the sha256 of every file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from banger.errors import IntegrityError

MANIFEST = "manifest.json"
VMLINUX = "vmlinux"
INITRD = "initrd.img"
MODULES_IMAGE = "modules.ext4"


class ResolvedPackage(BaseModel):
    """A Debian package as resolved through the signed index."""

    model_config = ConfigDict(frozen=True)
    name: str  # "linux-image-6.1.0-50-amd64"
    version: str  # "6.1.176-1"
    filename: str  # "pool/main/l/linux-signed-amd64/linux-image-..._amd64.deb"
    sha256: str
    size: int


class KernelManifest(BaseModel):
    """What ``<kernels>/<name>/manifest.json`` records."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str  # "debian-6.1"
    kernel_version: str  # "6.1.0-50-amd64" (uname -r), "" when unknown (imported kernels)
    source: Literal["debian", "url", "import"]
    mirror: str = ""  # "http://deb.debian.org/debian"
    suite: str = ""  # "bookworm"
    packages: dict[str, ResolvedPackage] = {}  # {"kernel": ..., "busybox": ...}
    files: dict[str, str] = {}  # file name -> sha256: {"vmlinux": "ab12...", "initrd.img": ...}
    boot_modules: list[str] = []  # load order inside the initrd: ["kernel/drivers/virtio/virtio.ko", ...]
    modules_dep_by: str = ""  # "depmod" (host kmod) or "banger" (text modules.dep only)
    built_at: str = ""  # ISO 8601 UTC

    def has(self, file: str) -> bool:
        return file in self.files


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(directory: Path, manifest: KernelManifest) -> None:
    """Write ``manifest.json`` into ``directory``."""
    (directory / MANIFEST).write_text(json.dumps(manifest.model_dump(), indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> KernelManifest:
    """Read and validate ``directory/manifest.json``."""
    try:
        return KernelManifest.model_validate_json((directory / MANIFEST).read_text())
    except (OSError, ValidationError) as exc:
        raise IntegrityError(f"kernel manifest {directory / MANIFEST} is unreadable: {exc}",
                             hint="remove the kernel with `banger kernel rm` and pull it again") from exc
