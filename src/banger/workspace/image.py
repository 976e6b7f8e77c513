"""A workspace built offline: the repository as an ext4 image the guest mounts, nothing streamed or hashed
in the guest.

The host stages the tracked files (hardlinks where it may, copies otherwise), a shallow ``.git`` whose
HEAD is the host's (one pack of that commit's objects), and an index built against the staged files with
``core.checkStat=minimal``, so the guest's git trusts it: ``mkfs.ext4 -d`` keeps sizes and mtimes, and
minimal stat checking compares nothing else. The image is as big as the workspace slot every VM has
(:data:`SLOT_SIZE`, sparse), because a clone's disk must keep its template's capacity; the filesystem
inside is twice the files and at least :data:`MIN_FS` (run ``resize2fs`` on it in the guest for more).

Only banger's own files and the repository's tracked (and, when asked, untracked) regular files and
symlinks go in: a path that is not a plain relative one, or a file of another type, is refused.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from banger.errors import InvalidArgument
from banger.host import ext4
from banger.host.run import run
from banger.workspace import plan, repo

SLOT_SIZE = 64 << 30  # the workspace disk's capacity in every VM (sparse: costs nothing until written)
MIN_FS = 8 << 30  # the filesystem inside: twice the files, at least this (room to build; the guest can grow it)
LABEL = "banger-ws"


@dataclass(frozen=True)
class Built:
    files: int
    bytes: int
    seconds: dict[str, float]


def _safe_rel(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise InvalidArgument(f"refusing to stage {path!r}: not a plain relative path inside the repository")
    return path


def stage_files(root: Path, entries: list[repo.Entry], tree: Path) -> int:
    """Put every entry under ``tree`` (hardlink, else copy; symlinks as symlinks); the bytes staged."""
    total = 0
    made: set[str] = set()
    for entry in entries:
        rel = _safe_rel(entry.path)
        src, dst = root / rel, tree / rel
        parent = rel.rpartition("/")[0]
        if parent and parent not in made:
            os.makedirs(tree / parent, exist_ok=True)
            made.add(parent)
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
            continue
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"refusing to stage {entry.path!r}: not a regular file or symlink")
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK):
                raise
            shutil.copy2(src, dst, follow_symlinks=False)
        total += st.st_size
    return total


async def build(info: repo.RepoInfo, head: str, branch: str | None, entries: list[repo.Entry], dest: Path,
                scratch: Path) -> Built:
    """The workspace image ``dest`` (SLOT_SIZE, sparse) of ``entries`` at ``head``; ``scratch`` is removed."""
    seconds: dict[str, float] = {}
    t = time.monotonic()

    def mark(what: str) -> None:
        nonlocal t
        now = time.monotonic()
        seconds[what] = round(now - t, 3)
        t = now

    tree = scratch / "tree"
    try:
        tree.mkdir(parents=True)
        staged = await asyncio.to_thread(stage_files, info.root, entries, tree)
        mark("stage")
        git_dir = tree / ".git"
        await shallow_git_dir(info, head, branch, git_dir)
        with open(git_dir / "config", "a") as f:
            # The guest's inode numbers, device and ctime differ from the host's: compare size and mtime only.
            f.write("\tcheckStat = minimal\n\ttrustctime = false\n")
            for key, value in info.identity.items():
                section, _, name = key.partition(".")
                f.write(f"[{section}]\n\t{name} = {_git_value(value)}\n")
        mark("pack")
        await _index(tree, git_dir)
        mark("index")
        size = min(SLOT_SIZE, max(MIN_FS, 2 * await asyncio.to_thread(ext4.size_for_tree, tree)))
        await ext4.make_from_tree(tree, dest, size, label=LABEL)
        os.truncate(dest, SLOT_SIZE)
        mark("mkfs")
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return Built(files=len(entries), bytes=staged, seconds=seconds)


def _git_value(value: str) -> str:
    """A git config value in double quotes, for the identity the host's git has."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


async def _index(tree: Path, git_dir: Path) -> None:
    """An index of HEAD whose stat data matches the staged files (so the guest's `git status` is clean)."""
    env = {**repo.GIT_ENV, "GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(tree)}
    base = repo.git_argv(tree, "-c", "core.checkStat=minimal")
    await run([*base, "read-tree", "HEAD"], env=env)
    # Unchanged files are hashed here, on the host, once; a file the work tree has modified stays modified.
    await run([*base, "update-index", "-q", "--refresh"], env=env, check=False)


async def shallow_git_dir(info: repo.RepoInfo, head: str, branch: str | None, git_dir: Path) -> None:
    """A fresh .git holding ``head``'s commit, trees and blobs in one pack, marked shallow."""
    for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags", "info"):
        (git_dir / sub).mkdir(parents=True, exist_ok=True)
    for rel, text in plan.shallow_git_files(head, branch).items():
        (git_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (git_dir / rel).write_text(text)
    objects = await repo.git(info, "rev-list", "--objects", "--no-walk", head)
    await repo.git(info, "pack-objects", "-q", "--window=0", str(git_dir / "objects" / "pack" / "pack"),
                   input=objects.encode())


def mount_script(device: str, guest_path: str, *, trust_owner: bool) -> str:
    """The guest script that mounts a workspace disk at ``guest_path``."""
    from banger.script import Script

    s = Script()
    # The template read this slot (partition scan) while it was blank: drop what the kernel cached of it.
    s.line("blockdev --flushbufs {}", device)
    s.line("mkdir -p {}", guest_path)
    s.line("mount -t ext4 -o noatime {} {}", device, guest_path)
    if trust_owner:
        # Files keep the host owner's uid, which git in the guest (root) would call dubious.
        s.line("git config --system --get-all safe.directory | grep -qxF -- {} || "
               "git config --system --add safe.directory {}", guest_path, guest_path)
    # Under emulation the first `git status` or export of a fresh disk spends a second or more reading the
    # inodes of every tracked file: read them now, in the background at idle priority (read-only: no lock,
    # no index write), so that cost falls in time the guest would otherwise spend idle.
    s.line("GIT_OPTIONAL_LOCKS=0 setsid -f nice -n 19 ionice -c 3 git -C {} diff-files --quiet "
           "</dev/null >/dev/null 2>&1 || true", guest_path)  # only an optimisation: never fail the mount
    return s.render()
