"""The embedded image catalog (``images/catalog.json``): published bundles by name, with their sha256."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from banger.errors import ConfigError

CATALOG = Path(__file__).parent / "catalog.json"


class CatalogEntry(BaseModel):
    """One published bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://\S+$")  # "https://example.org/debian-bookworm-0123456789ab.tar.zst"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # sha256 of the .tar.zst file
    kernel_ref: str = "debian-6.1"  # kernel catalog name the image boots with
    description: str = ""  # "Debian 12 dev sandbox: systemd, sshd, git, docker, mise"


def parse_catalog(text: str) -> dict[str, CatalogEntry]:
    """Entries of a catalog document (``{"images": {name: entry}}``)."""
    try:
        doc = json.loads(text)
        return {name: CatalogEntry.model_validate(e) for name, e in doc.get("images", {}).items()}
    except (ValueError, ValidationError, AttributeError) as exc:
        raise ConfigError(f"image catalog is malformed: {exc}", hint="fix or restore images/catalog.json") from exc


def load_catalog(path: Path = CATALOG) -> dict[str, CatalogEntry]:
    """The catalog at ``path`` (the embedded one by default)."""
    return parse_catalog(path.read_text())
