"""Pure parts of the golden recipe and the image manifest/catalog formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.errors import ConfigError, IntegrityError
from banger.images import golden
from banger.images.bundle import bundle_name
from banger.images.catalog import load_catalog, parse_catalog
from banger.images.manifest import ImageManifest, read_manifest, write_manifest

MIRROR = "http://deb.debian.org/debian"


def test_inputs_hash_is_stable_and_follows_the_mirror() -> None:
    assert golden.inputs_hash(MIRROR) == golden.inputs_hash(MIRROR + "/")
    assert golden.inputs_hash(MIRROR) != golden.inputs_hash("http://mirror.example/debian")


def test_sources_add_security_only_for_standard_layouts() -> None:
    assert golden.sources(MIRROR)[-1] == "deb http://deb.debian.org/debian-security bookworm-security main"
    assert len(golden.sources("http://local:3142/deb")) == 2


def test_mmdebstrap_argv_is_minbase_with_every_package(tmp_path: Path) -> None:
    argv = golden.mmdebstrap_argv(tmp_path / "tree", MIRROR)
    assert "--variant=minbase" in argv and argv[argv.index("bookworm") + 1] == str(tmp_path / "tree")
    include = next(a for a in argv if a.startswith("--include="))
    assert set(include.removeprefix("--include=").split(",")) == set(golden.PACKAGES)


def test_every_placed_file_ships_with_the_package() -> None:
    for name in golden.PLACEMENT:
        assert (golden.FILES_DIR / name).is_file(), name


def test_manifest_round_trips_and_rejects_garbage(tmp_path: Path) -> None:
    manifest = ImageManifest(name="x", rootfs_size=5, rootfs_sha256="ab", extra={"k": [1]})
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    (tmp_path / "manifest.json").write_text('{"name": "x", "source": "stolen"}')
    with pytest.raises(IntegrityError):
        read_manifest(tmp_path)
    with pytest.raises(IntegrityError, match="no manifest.json"):
        read_manifest(tmp_path / "missing")


def test_catalog_parses_and_refuses_bad_entries() -> None:
    assert isinstance(load_catalog(), dict)
    good = '{"images": {"a": {"url": "http://127.0.0.1/a.tar.zst", "sha256": "%s"}}}' % ("0" * 64)
    assert parse_catalog(good)["a"].kernel_ref == "debian-6.1"
    with pytest.raises(ConfigError):
        parse_catalog(good.replace("0" * 64, "nope"))


def test_bundle_names_are_content_addressed() -> None:
    assert bundle_name("debian-bookworm", "0123456789abcdef" * 4) == "debian-bookworm-0123456789ab.tar.zst"
