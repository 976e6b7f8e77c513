"""Image bundles: one ``.tar.zst`` holding ``manifest.json`` + ``rootfs.ext4``, for moving images between hosts.

A bundle has no work seed, and nothing of its rootfs is unpacked on the host: the rootfs must pass
``e2fsck -fn`` and gets an empty seed, which the guest fills from its image at first boot (see
:mod:`banger.images.seed`). Every
import is checked three times: the bundle's sha256 (``--sha256`` or the catalog entry; required for
URLs), zstd's frame checksum, and the manifest's ``rootfs_sha256`` against the bytes unpacked. Only the
two expected regular-file members are accepted. The import is staged beside ``dest``, so any failure
leaves nothing there.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from banger.errors import IntegrityError, InvalidArgument, NotFound
from banger.host.ext4 import verify_clean
from banger.host.http import download, sha256_file
from banger.images.catalog import CatalogEntry, load_catalog
from banger.images.local import staging
from banger.images.manifest import (
    MANIFEST,
    ROOTFS,
    WORK_SEED,
    ImageManifest,
    read_manifest,
    utc_now,
    write_manifest,
)
from banger.images.seed import empty_seed
from banger.names import validate_name
from banger.progress import NullReporter, Reporter

SUFFIX = ".tar.zst"
CHUNK = 1 << 20
BLOCK = 64 << 10
ZERO_BLOCK = bytes(BLOCK)
MAX_MANIFEST = 16 << 20
MAX_ROOTFS = 64 << 30  # the largest rootfs a bundle may unpack to (apparent size; it is sparse)
MEMBERS = (MANIFEST, ROOTFS)
ZSTD_LEVEL = 3


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return self.out.write(data)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata, so the same image always gives the same bundle bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def _write_bundle(image_dir: Path, part: Path) -> str:
    """Stream manifest then rootfs into ``part``, return the bundle's sha256 (runs in a thread)."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
    with open(part, "wb") as raw:
        hashing = _HashingWriter(raw)
        with compressor.stream_writer(cast(IO[bytes], hashing), closefd=False) as zst:
            with tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in MEMBERS:
                    path = image_dir / name
                    with open(path, "rb") as src:
                        tar.addfile(_tarinfo(name, path.stat().st_size), src)
    return hashing.digest.hexdigest()


def bundle_name(image_name: str, sha256: str) -> str:
    """The content-addressed file name of a bundle: ``<name>-<sha256[:12]>.tar.zst``."""
    return f"{image_name}-{sha256[:12]}{SUFFIX}"


async def export_bundle(image_dir: Path, out: Path) -> Path:
    """Write ``image_dir`` as a bundle to ``out`` (a file, or a directory to name it by content hash)."""
    manifest = read_manifest(image_dir)
    if not (image_dir / ROOTFS).is_file():
        raise NotFound(f"image {manifest.name!r} has no {ROOTFS}", hint="remove and re-create the image")
    folder = out if out.is_dir() else out.parent
    part = folder / f".bundle-{uuid.uuid4().hex[:8]}.part"
    try:
        digest = await asyncio.to_thread(_write_bundle, image_dir, part)
        final = folder / bundle_name(manifest.name, digest) if out.is_dir() else out
        os.replace(part, final)
        return final
    finally:
        part.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Source:
    url: str | None
    path: Path | None
    sha256: str | None


def _resolve(source: Path | str, sha256: str | None, catalog: dict[str, CatalogEntry]) -> _Source:
    text = str(source)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        by_url = next((e for e in catalog.values() if e.url == source), None)
        sha = sha256 or (by_url.sha256 if by_url else None)
        if not sha:
            raise InvalidArgument(
                f"refusing to import {source} without a sha256 to check it against",
                hint="pass --sha256 <hex> (the publisher's checksum of the .tar.zst)",
            )
        return _Source(source, None, sha)
    if isinstance(source, str) and not Path(source).exists() and text in catalog:
        entry = catalog[text]
        return _Source(entry.url, None, sha256 or entry.sha256)
    path = Path(source)
    if not path.is_file():
        raise NotFound(f"bundle {text!r} is not a file, a URL or a catalog name", hint="check the path")
    return _Source(None, path, sha256)


async def _fetch(src: _Source, stage: Path, reporter: Reporter) -> Path:
    if src.url:
        reporter.stage(f"downloading {src.url}")
        local = stage / f"bundle{SUFFIX}"
        await download(src.url, local, sha256=src.sha256, reporter=reporter)
        return local
    assert src.path is not None
    if src.sha256:
        reporter.stage(f"checking sha256 of {src.path.name}")
        got = await asyncio.to_thread(sha256_file, src.path)
        if got != src.sha256.lower():
            raise IntegrityError(
                f"sha256 mismatch for {src.path}: expected {src.sha256}, got {got}",
                hint="the bundle is corrupt or not the one you meant; nothing was imported",
            )
    return src.path


def _write_sparse(src: IO[bytes], dest: Path, size: int) -> str:
    """Copy ``size`` bytes to ``dest``, seeking over all-zero blocks; return their sha256."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            view = memoryview(chunk)
            for offset in range(0, len(chunk), BLOCK):
                block = view[offset : offset + BLOCK]
                if block == ZERO_BLOCK[: len(block)]:
                    out.seek(len(block), os.SEEK_CUR)
                else:
                    out.write(block)
        out.truncate(size)
    return digest.hexdigest()


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, seen: set[str]) -> IO[bytes]:
    if info.name not in MEMBERS or info.name in seen or not info.isreg():
        raise IntegrityError(
            f"unexpected member {info.name!r} in bundle",
            hint=f"a bundle holds exactly {' and '.join(MEMBERS)} as plain files",
        )
    if info.name == MANIFEST and info.size > MAX_MANIFEST:
        raise IntegrityError(f"bundle's {MANIFEST} is implausibly large ({info.size} bytes)")
    if info.size > MAX_ROOTFS:  # decompression stops at a stated limit, whatever the archive claims
        raise IntegrityError(f"bundle's {info.name} would unpack to {info.size} bytes, over the "
                             f"{MAX_ROOTFS >> 30} GiB limit for a root filesystem")
    seen.add(info.name)
    src = tar.extractfile(info)
    assert src is not None
    return src


def _unpack(bundle: Path, stage: Path) -> str:
    """Unpack the two members into ``stage``; return the rootfs's sha256 (runs in a thread)."""
    seen: set[str] = set()
    rootfs_sha = ""
    with open(bundle, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zst:
        with tarfile.open(fileobj=zst, mode="r|") as tar:
            for info in tar:
                with _member(tar, info, seen) as src:
                    got = _write_sparse(src, stage / info.name, info.size)
                if info.name == ROOTFS:
                    rootfs_sha = got
    missing = [m for m in MEMBERS if m not in seen]
    if missing:
        raise IntegrityError(f"bundle {bundle.name} lacks {', '.join(missing)}")
    return rootfs_sha


async def _unpack_checked(bundle: Path, stage: Path) -> ImageManifest:
    try:
        rootfs_sha = await asyncio.to_thread(_unpack, bundle, stage)
    except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"bundle {bundle.name} is corrupt: {exc}", hint="download it again") from exc
    manifest = read_manifest(stage)
    if rootfs_sha != manifest.rootfs_sha256:
        raise IntegrityError(
            f"{ROOTFS} in bundle {bundle.name} does not match its manifest "
            f"(expected sha256 {manifest.rootfs_sha256}, got {rootfs_sha})",
            hint="the bundle is corrupt; nothing was imported",
        )
    return manifest


async def import_bundle(
    source: Path | str,
    dest: Path,
    *,
    sha256: str | None = None,
    reporter: Reporter | None = None,
    catalog: dict[str, CatalogEntry] | None = None,
) -> ImageManifest:
    """Import a bundle (path, URL or catalog name) as the image directory ``dest``, named ``dest.name``.

    URLs need a sha256 (``sha256`` or the catalog's). Raises IntegrityError on any mismatch or
    corruption, FetchError when the download fails; nothing is left at ``dest`` either way.
    """
    reporter = reporter or NullReporter()
    name = validate_name("image", dest.name)
    src = _resolve(source, sha256, load_catalog() if catalog is None else catalog)
    async with staging(dest) as stage:
        bundle = await _fetch(src, stage, reporter)
        reporter.stage("unpacking bundle")
        manifest = await _unpack_checked(bundle, stage)
        if bundle.parent == stage:
            bundle.unlink()
        reporter.stage("checking the rootfs (e2fsck -fn)")
        await verify_clean(stage / ROOTFS, f"the rootfs in bundle {bundle.name}")
        seed_size = await empty_seed(stage / WORK_SEED)  # the guest fills /root from its image at first boot
        extra = {**manifest.extra, "bundle_name": manifest.name, "bundle_created_at": manifest.created_at}
        extra["imported_from"] = src.url or str(src.path)
        manifest = manifest.model_copy(
            update={
                "name": name,
                "source": "bundle",
                "work_seed_size": seed_size,
                "created_at": utc_now(),
                "extra": extra,
            }
        )
        write_manifest(stage, manifest)
    return manifest
