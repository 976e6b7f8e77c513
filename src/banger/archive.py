"""Unpacking tar members into a directory tree without trusting their names or the tree's own symlinks.

Used for every archive whose bytes banger did not make itself: OCI layers (``images.oci_layers``) and
Debian packages (``kernels.deb``). Rules, whatever the Python version (``tarfile``'s ``filter=`` only exists
from 3.11.4, and Debian 12 ships 3.11.2):

- a member name that is absolute or has a ``..`` component is refused (:func:`entry_name`);
- paths are resolved inside the tree with chroot semantics (:func:`resolve_in_root`): an absolute symlink
  means the tree's root, and a path that would climb above it raises :class:`Escape`;
- files are created with ``O_NOFOLLOW | O_EXCL``; symlinks are made, never followed; hard links must
  point at an existing non-directory inside the tree; device nodes are never created;
- attributes deferred to the end (directory modes and times) are applied through descriptors opened
  component by component with ``O_NOFOLLOW | O_DIRECTORY`` (:func:`open_beneath`), so a directory a later
  entry replaced with a symlink is skipped instead of changing whatever the symlink points at.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Escape(Exception):
    """A path resolved to somewhere above the tree's root."""


def parts(name: str) -> list[str]:
    """The non-empty, non-``.`` components of a slash-separated path."""
    return [p for p in name.split("/") if p not in ("", ".")]


def resolve_in_root(root: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``rel`` as a host path in ``root``, following symlinks with chroot semantics; Escape if it leaves."""
    done: list[str] = []
    todo = parts(rel)
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                raise Escape(rel)
            done.pop()
            continue
        here = root.joinpath(*done, part)
        if (todo or follow_last) and here.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise Escape(f"{rel}: too many levels of symbolic links")
            target = os.readlink(here)
            todo = parts(target) + todo
            if target.startswith("/"):
                done = []
            continue
        done.append(part)
    return root.joinpath(*done)


def entry_name(member: tarfile.TarInfo) -> str:
    """The member's normalised relative name ("" for the root); ValueError when absolute or with ``..``."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or "\0" in name:
        raise ValueError(name)
    return "/".join(parts(name))


@contextlib.contextmanager
def open_beneath(root: Path, rel: str) -> Iterator[int | None]:
    """A descriptor of directory ``root/rel`` reached without following any symlink, or None.

    None means some component is no longer a real directory (replaced by a symlink or a file, or gone):
    the caller then has nothing to change.
    """
    fds = [os.open(root, _DIR_FLAGS)]
    try:
        for part in parts(rel):
            try:
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    yield None
                    return
                raise
        yield fds[-1]
    finally:
        for fd in reversed(fds):
            os.close(fd)


def remove(path: Path) -> None:
    """Delete ``path`` (a tree, a file or a symlink, never what a symlink points at); gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def safe_mode(mode: int, *, keep_special: bool) -> int:
    """The permission bits to apply: setuid, setgid and sticky only when ``keep_special``."""
    return stat.S_IMODE(mode) if keep_special else stat.S_IMODE(mode) & 0o777


def write_regular(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, *, limit: int | None = None) -> None:
    """Create ``path`` (which must not exist; never through a symlink) with the member's bytes."""
    import io

    if limit is not None and member.size > limit:
        raise ValueError(f"{member.name} is {member.size} bytes, over the {limit}-byte limit")
    src = tar.extractfile(member) or io.BytesIO()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def hardlink_target(root: Path, member: tarfile.TarInfo) -> Path:
    """Where a hard link member points, inside ``root``; Escape when outside or not a linkable file."""
    linkname = member.linkname
    if linkname.startswith("/") or ".." in linkname.split("/"):
        raise Escape(linkname)
    target = resolve_in_root(root, "/".join(parts(linkname)), follow_last=False)
    if not os.path.lexists(target) or (os.path.isdir(target) and not target.is_symlink()):
        raise Escape(f"hard link to missing or directory target {linkname!r}")
    return target


def apply_dir_attrs(root: Path, rel: str, member: tarfile.TarInfo, *, chown: bool, keep_special: bool) -> bool:
    """Owner, mode and mtime of directory ``root/rel`` from ``member``; False when it was replaced meanwhile."""
    with open_beneath(root, rel) as fd:
        if fd is None:
            return False
        if chown:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, safe_mode(member.mode, keep_special=keep_special))
        os.utime(fd, (member.mtime, member.mtime))
        return True


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, name: str) -> bool:
    """Write one member at ``name`` (already validated) under ``root``, owned by the caller, modes without
    setuid/setgid; parents are made as plain 0755 directories. Directories get their mode at once (the
    caller owns the tree and writes no member through them afterwards). False when the type is skipped.
    """
    parent_rel, _, base = name.rpartition("/")
    parent = resolve_in_root(root, parent_rel)
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if resolve_in_root(root, parent_rel) != parent or not parent.is_dir() or parent.is_symlink():
        raise Escape(name)
    path = parent / base
    if member.isdir():
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            remove(path)
        path.mkdir(mode=0o755, exist_ok=True)
        os.chmod(path, safe_mode(member.mode, keep_special=False) | 0o700, follow_symlinks=False)
        return True
    if os.path.lexists(path):
        remove(path)
    if member.isreg():
        write_regular(tar, member, path)
        os.chmod(path, safe_mode(member.mode, keep_special=False))
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        os.link(hardlink_target(root, member), path, follow_symlinks=False)
    else:
        return False
    return True
