"""Golden image bundles: export, serve over loopback HTTP, import, and refuse a single corrupted byte."""

from __future__ import annotations

import asyncio
import functools
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from banger.errors import IntegrityError
from banger.host.ext4 import debugfs
from banger.host.http import sha256_file
from banger.images.bundle import export_bundle, import_bundle
from banger.images.catalog import CatalogEntry
from banger.images.manifest import ROOTFS, WORK_SEED, read_manifest
from banger.progress import RecordingReporter


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory served by http.server on 127.0.0.1 (a random port), and its base URL."""
    root = tmp_path_factory.mktemp("www")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def golden_bundle(golden_image: Path, served: tuple[Path, str]) -> Path:
    """The golden image exported once into the served directory."""
    return asyncio.run(export_bundle(golden_image, served[0]))


def _corrupt_copy(bundle: Path, name: str) -> Path:
    bad = bundle.with_name(name)
    shutil.copyfile(bundle, bad)
    with open(bad, "r+b") as f:
        f.seek(bad.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return bad


def _leftovers(images: Path) -> list[str]:
    return sorted(p.name for p in images.iterdir()) if images.exists() else []


async def test_round_trip_over_http(
    golden_image: Path, golden_bundle: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    url = f"{served[1]}/{golden_bundle.name}"
    reporter = RecordingReporter()
    manifest = await import_bundle(
        url, tmp_path / "images" / "imported", sha256=sha256_file(golden_bundle), reporter=reporter
    )
    image = tmp_path / "images" / "imported"
    assert manifest.source == "bundle" and manifest.name == "imported"
    assert manifest.rootfs_sha256 == read_manifest(golden_image).rootfs_sha256 == sha256_file(image / ROOTFS)
    assert read_manifest(image) == manifest
    # Nothing of the bundle is unpacked on the host: an empty, unmarked seed; the guest fills /root from
    # the image's own copy at first boot (tests/system/test_host_boundary.py boots one).
    seed = set((await debugfs(image / WORK_SEED, "ls /")).split())
    assert ".bashrc" not in seed and ".banger-seeded" not in seed
    assert any(stage.startswith("downloading") for stage in reporter.stages)
    assert _leftovers(tmp_path / "images") == ["imported"]


async def test_catalog_name_resolves_url_and_checksum(
    golden_bundle: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    entry = CatalogEntry(url=f"{served[1]}/{golden_bundle.name}", sha256=sha256_file(golden_bundle))
    manifest = await import_bundle("debian-bookworm", tmp_path / "bookworm", catalog={"debian-bookworm": entry})
    assert manifest.extra["imported_from"] == entry.url


async def test_corrupt_byte_over_http_fails_integrity_and_leaves_nothing(
    golden_bundle: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    bad = _corrupt_copy(golden_bundle, "corrupt-http.tar.zst")
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        await import_bundle(f"{served[1]}/{bad.name}", tmp_path / "images" / "bad", sha256=sha256_file(golden_bundle))
    assert _leftovers(tmp_path / "images") == []


async def test_corrupt_local_bundle_without_checksum_still_fails(golden_bundle: Path, tmp_path: Path) -> None:
    # No --sha256: zstd's frame checksum or the manifest's rootfs sha256 must catch it.
    bad = _corrupt_copy(golden_bundle, "corrupt-local.tar.zst")
    try:
        with pytest.raises(IntegrityError):
            await import_bundle(bad, tmp_path / "images" / "bad")
    finally:
        bad.unlink()
    assert _leftovers(tmp_path / "images") == []
