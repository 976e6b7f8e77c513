"""The embedded kernel catalog (``catalog.json``): what ``banger kernel pull NAME`` can fetch and how."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from banger.errors import InvalidArgument, NotFound
from banger.names import NAME_RE

DEFAULT_KERNEL = "debian-6.1"
_SHA256_RE = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DebianSource(_Strict):
    """Build from a Debian kernel package resolved through the archive's signed index."""

    kind: Literal["debian"] = "debian"
    suite: str = Field(pattern=r"^[a-z0-9-]+$")  # "bookworm"
    component: str = "main"
    arch: str = "amd64"
    package_regex: str  # "^linux-image-6\\.1\\.0-[0-9]+-amd64$"
    busybox_package: str = "busybox-static"

    @field_validator("package_regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"package_regex {v!r} does not compile: {exc}") from exc
        return v


class UrlSource(_Strict):
    """A ready kernel (e.g. a Firecracker CI build): an ELF vmlinux and optionally an initrd, sha256-pinned."""

    kind: Literal["url"] = "url"
    vmlinux_url: str = Field(pattern=r"^https?://\S+$")
    vmlinux_sha256: str = Field(pattern=_SHA256_RE)
    initrd_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    initrd_sha256: str | None = Field(default=None, pattern=_SHA256_RE)


class CatalogEntry(_Strict):
    """One pullable kernel."""

    name: str  # "debian-6.1"
    distro: str  # "debian"
    arch: Literal["x86_64"] = "x86_64"
    kernel_version: str  # "6.1.0-*-amd64" (a pattern when the source is resolved at pull time)
    source: Annotated[DebianSource | UrlSource, Field(discriminator="kind")]
    size: str = ""  # human-readable download/disk size
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid kernel name")
        return v


class Catalog(_Strict):
    kernels: list[CatalogEntry]


def parse_catalog(text: str) -> Catalog:
    """Validate catalog JSON text; duplicate names are an error."""
    try:
        catalog = Catalog.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise InvalidArgument(f"kernel catalog is invalid: {exc}") from exc
    names = [k.name for k in catalog.kernels]
    if len(names) != len(set(names)):
        raise InvalidArgument(f"kernel catalog has duplicate names: {names}")
    return catalog


@cache
def load_catalog() -> Catalog:
    """The catalog shipped inside the banger package."""
    text = resources.files("banger.kernels").joinpath("catalog.json").read_text()
    return parse_catalog(text)


def entries() -> list[CatalogEntry]:
    """Every embedded catalog entry."""
    return list(load_catalog().kernels)


def get_entry(name: str) -> CatalogEntry:
    """The catalog entry called ``name``, or NotFound listing what exists."""
    for entry in load_catalog().kernels:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in load_catalog().kernels)
    raise NotFound(f"no kernel {name!r} in the catalog",
                   hint=f"available: {known}; see `banger kernel list --available`")
