"""Flatten OCI layer tarballs into one directory tree: whiteouts, opaque dirs, owners, and no escapes.

Paths are resolved inside the tree with chroot semantics, the way the guest will see them: an absolute
symlink target means the tree's root, never the host's. Every entry whose name is absolute or contains
``..``, and every write or hard link that would go through a symlink to a place above the tree's root,
fails the whole flatten with an IntegrityError naming the layer and the entry. Creating a symlink that
points anywhere is fine: only following it out of the tree is not. Device nodes are skipped (logged);
the guest's devtmpfs provides them.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import zstandard

from banger.archive import Escape, apply_dir_attrs, entry_name, hardlink_target, resolve_in_root, write_regular
from banger.archive import remove as _remove
from banger.errors import HostError, IntegrityError
from banger.progress import NullReporter, Reporter

__all__ = ["Budget", "Escape", "LayerApplier", "apply_layer", "entry_name", "flatten", "open_layer", "resolve_in_root"]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@contextmanager
def open_layer(path: Path) -> Iterator[tarfile.TarFile]:
    """A streaming TarFile over a gzip, zstd or uncompressed layer blob (compression sniffed from magic)."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        stream: IO[bytes] = raw
        if magic.startswith(ZSTD_MAGIC):
            stream = zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[assignment]
            mode = "r|"
        else:
            mode = "r|gz" if magic.startswith(GZIP_MAGIC) else "r|"
        try:
            with tarfile.open(fileobj=stream, mode=mode) as tar:  # type: ignore[call-overload]
                yield tar
        except (tarfile.TarError, zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise IntegrityError(f"layer {path.name} is not a readable tar archive: {exc}") from exc
        except OSError as exc:
            raise HostError(f"could not unpack layer {path.name}: {exc}", hint="check free disk space") \
                from exc


MAX_TREE_BYTES = 64 << 30  # what all layers of one image may unpack to, together
MAX_TREE_ENTRIES = 2_000_000


@dataclass
class Budget:
    """What the layers of one image may still unpack (decompression stops at a stated limit)."""

    bytes_left: int = MAX_TREE_BYTES
    entries_left: int = MAX_TREE_ENTRIES

    def spend(self, member: tarfile.TarInfo, layer: str) -> None:
        self.entries_left -= 1
        self.bytes_left -= max(member.size, 0) if member.isreg() else 0
        if self.bytes_left < 0 or self.entries_left < 0:
            raise IntegrityError(
                f"the image unpacks to more than {MAX_TREE_BYTES >> 30} GiB or {MAX_TREE_ENTRIES} entries "
                f"(reached in layer {layer})", hint="banger refuses images this large; nothing was kept")


@dataclass
class LayerApplier:
    """Applies one layer's entries onto ``root``; tracks what this layer created (whiteouts spare those)."""

    root: Path
    layer: str
    reporter: Reporter = field(default_factory=NullReporter)
    chown: bool = True
    created: set[str] = field(default_factory=set)
    ancestors: set[str] = field(default_factory=set)  # every parent dir of a path in ``created``
    dirs: list[tuple[str, tarfile.TarInfo]] = field(default_factory=list)  # (name in the tree, member)
    budget: Budget = field(default_factory=Budget)

    def fail(self, name: str, why: str) -> IntegrityError:
        return IntegrityError(
            f"layer {self.layer} has a hostile entry {name!r}: {why}",
            hint="the image tries to write outside its root filesystem; nothing was kept",
        )

    def apply(self, tar: tarfile.TarFile) -> None:
        """Apply every entry of ``tar``, then set directory modes and times."""
        for member in tar:
            self.budget.spend(member, self.layer)
            try:
                name = entry_name(member)
            except ValueError:
                raise self.fail(member.name, "absolute path or '..' component") from None
            try:
                self.entry(tar, member, name)
            except Escape:
                raise self.fail(member.name, "resolves through a symlink to outside the root") from None
        # Through O_NOFOLLOW descriptors: a directory a later entry replaced with a symlink is skipped,
        # never the place the symlink points at.
        for rel, member in reversed(self.dirs):
            apply_dir_attrs(self.root, rel, member, chown=self.chown, keep_special=True)

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        base = name.rsplit("/", 1)[-1]
        parent_rel = name.rsplit("/", 1)[0] if "/" in name else ""
        if base == OPAQUE:
            return self.opaque(parent_rel)
        if base.startswith(WHITEOUT + WHITEOUT):
            return None  # other aufs metadata (.wh..wh.plnk, ...): nothing to apply
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT):]
            if hidden in ("", ".", ".."):
                raise self.fail(member.name, "whiteout of an empty, '.' or '..' name")
            return self.whiteout(f"{parent_rel}/{hidden}".lstrip("/"))
        if member.ischr() or member.isblk():
            self.reporter.log(f"layer {self.layer}: skipped device node /{name} (devtmpfs provides it)")
            return None
        parent = self.ensure_dirs(parent_rel)
        self.mark(name)
        if not name:
            self.dirs.append(("", member))
            return None
        self.write(tar, member, name, parent / base)
        return None

    def ensure_dirs(self, rel: str) -> Path:
        """The resolved parent directory, created (0755 root) when the archive did not list it."""
        path = resolve_in_root(self.root, rel)
        if not path.is_dir():
            if os.path.lexists(path):
                path.unlink()
            parent_rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
            self.ensure_dirs(parent_rel)
            path.mkdir(mode=0o755)
            self.mark(rel)
        return path

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, path: Path) -> None:
        if member.isdir():
            if os.path.lexists(path) and not path.is_dir() or path.is_symlink():
                _remove(path)
            path.mkdir(mode=0o700, exist_ok=True)
            self.dirs.append((str(path.relative_to(self.root)), member))
            return
        if os.path.lexists(path):
            _remove(path)
        if member.isreg():
            self.regular(tar, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            self.hardlink(member, path)
        elif member.isfifo():
            os.mkfifo(path)
        else:
            self.reporter.log(f"layer {self.layer}: skipped /{member.name} (tar type {member.type!r})")
            return
        if not member.islnk():
            self.attrs(path, member)

    def regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        write_regular(tar, member, path)

    def hardlink(self, member: tarfile.TarInfo, path: Path) -> None:
        try:
            target = hardlink_target(self.root, member)
        except Escape:
            raise self.fail(member.name, f"hard link to {member.linkname!r} outside the root or not a file") \
                from None
        os.link(target, path, follow_symlinks=False)

    def attrs(self, path: Path, member: tarfile.TarInfo) -> None:
        """Owner, then mode (chown clears setuid bits), xattrs and mtime; symlinks get owner and time only."""
        if self.chown:
            os.lchown(path, member.uid, member.gid)
        if not member.issym():
            os.chmod(path, stat.S_IMODE(member.mode))
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                self.xattr(path, key[len("SCHILY.xattr."):], value)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def xattr(self, path: Path, key: str, value: str) -> None:
        try:
            os.setxattr(path, key, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        except OSError as exc:
            self.reporter.log(f"layer {self.layer}: could not set xattr {key} on {path.name}: {exc.strerror}")

    def mark(self, rel: str) -> None:
        """Record that this layer wrote ``rel`` (whiteouts in the same layer spare it)."""
        self.created.add(rel)
        while "/" in rel:
            rel = rel.rsplit("/", 1)[0]
            if rel in self.ancestors:
                break
            self.ancestors.add(rel)

    def whiteout(self, rel: str) -> None:
        """Delete ``rel`` as a lower layer left it; entries this layer wrote are not affected."""
        if rel in self.created and rel not in self.ancestors:
            return
        parent = resolve_in_root(self.root, rel.rsplit("/", 1)[0] if "/" in rel else "")
        target = parent / rel.rsplit("/", 1)[-1]
        if rel in self.ancestors and target.is_dir() and not target.is_symlink():
            self._prune(target, rel)
        elif os.path.lexists(target):
            _remove(target)

    def opaque(self, rel: str) -> None:
        """Hide everything lower layers put under directory ``rel``."""
        path = resolve_in_root(self.root, rel)
        if path.is_dir():
            self.mark(rel)
            self._prune(path, rel)

    def _prune(self, path: Path, rel: str) -> None:
        for child in os.listdir(path):
            crel = f"{rel}/{child}".lstrip("/")
            cpath = path / child
            if crel not in self.created and crel not in self.ancestors:
                _remove(cpath)
            elif cpath.is_dir() and not cpath.is_symlink():
                self._prune(cpath, crel)


def apply_layer(root: Path, blob: Path, *, layer: str = "", reporter: Reporter | None = None,
                budget: Budget | None = None) -> None:
    """Apply one layer blob (gzip, zstd or plain tar) onto ``root``; blocking, run it in a thread.

    ``budget`` is shared by all layers of an image (see :class:`Budget`).
    """
    applier = LayerApplier(root, layer or blob.name, reporter or NullReporter(), chown=os.geteuid() == 0,
                           budget=budget or Budget())
    with open_layer(blob) as tar:
        applier.apply(tar)


def flatten(root: Path, blobs: list[Path], *, reporter: Reporter | None = None) -> None:
    """Apply ``blobs`` oldest to newest onto ``root`` (created if missing)."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 and reporter is not None:
        reporter.log("not running as root: file owners from the image are not kept (all files owned by you)")
    budget = Budget()
    for blob in blobs:
        apply_layer(root, blob, reporter=reporter, budget=budget)
