"""``manifest.json``: what every image directory says about itself, whoever produced it."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from banger.errors import IntegrityError

MANIFEST = "manifest.json"
ROOTFS = "rootfs.ext4"
WORK_SEED = "work-seed.ext4"

Source = Literal["build", "bundle", "oci", "register"]


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (``2024-05-01T12:00:00Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ImageManifest(BaseModel):
    """One image: its rootfs and work seed, where it came from, and the kernel it expects."""

    model_config = ConfigDict(extra="forbid")

    name: str  # "debian-bookworm"
    distro: str = "debian"  # "debian", "ubuntu", "unknown" for OCI images without os-release
    arch: str = "x86_64"
    kernel_ref: str = "debian-6.1"  # a kernel catalog name, or "" when kernel/initrd ship with the image
    source: Source = "build"
    rootfs_size: int = 0  # apparent bytes of rootfs.ext4
    rootfs_sha256: str = ""  # hex sha256 of rootfs.ext4
    work_seed_size: int = 0  # apparent bytes of work-seed.ext4 (0 = no seed)
    created_at: str = Field(default_factory=utc_now)  # "2024-05-01T12:00:00Z"
    extra: dict[str, Any] = {}  # producer-specific facts: packages, inputs_hash, oci digest, ...


def read_manifest(image_dir: Path) -> ImageManifest:
    """Parse ``image_dir/manifest.json``; IntegrityError when it is missing or malformed."""
    path = image_dir / MANIFEST
    try:
        return ImageManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise IntegrityError(f"image at {image_dir} has no {MANIFEST}", hint="remove and re-create it") from exc
    except ValidationError as exc:
        raise IntegrityError(f"{path} is not a valid image manifest: {exc.errors()[0]['msg']}") from exc


def write_manifest(image_dir: Path, manifest: ImageManifest) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename) and return its path."""
    path = image_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
