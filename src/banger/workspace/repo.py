"""Inspecting a host repository with git (through banger.host.run): root, HEAD, branch, identity, files."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import HostError, InvalidArgument
from banger.host.run import run

GITLINK = "160000"


@dataclass(frozen=True)
class RepoInfo:
    """What prepare needs to know about the repository at ``root``."""

    root: Path  # the work tree's top level
    git_dir: Path  # absolute .git directory (a linked worktree's own git dir)
    head: str  # 40-hex commit HEAD points at
    branch: str | None  # None when HEAD is detached
    identity: dict[str, str] = field(default_factory=dict)  # {"user.name": ..., "user.email": ...}
    submodules: tuple[str, ...] = ()  # gitlink paths


@dataclass(frozen=True)
class Entry:
    """One path to ship, relative to the repository root, with its size in bytes."""

    path: str
    size: int


async def git(root: Path, *args: str, check: bool = True, input: bytes | None = None) -> str:
    """``git -C root ARGS`` stdout as text (HostError with git's stderr on failure when ``check``)."""
    done = await run(["git", "-C", str(root), *args], check=check, input=input)
    return done.out if done.returncode == 0 else ""


async def inspect(path: Path) -> RepoInfo:
    """The repository holding ``path``; InvalidArgument for anything prepare cannot ship."""
    path = _existing_dir(path)
    probe = await run(["git", "-C", str(path), "rev-parse", "--is-bare-repository"], check=False)
    if probe.returncode != 0:
        raise InvalidArgument(f"{path} is not inside a git repository",
                              hint="`git init` it and commit, or pass the path of a repository")
    if probe.out.strip() == "true":
        raise InvalidArgument(f"{path} is a bare repository: it has no work tree to ship",
                              hint="clone it (`git clone BARE DIR`) and prepare the clone")
    where = (await git(path, "rev-parse", "--show-toplevel", "--absolute-git-dir", check=False)).splitlines()
    if len(where) < 2:
        raise InvalidArgument(f"{path} is inside a git directory, not a work tree",
                              hint="pass the work tree's path")
    root, git_dir = Path(where[0]), Path(where[1])
    head = (await git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)).strip()
    if not head:
        raise InvalidArgument(f"the repository {root} has no commits yet",
                              hint="commit something first (`git commit --allow-empty -m init` will do)")
    branch = (await git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False)).strip() or None
    return RepoInfo(root, git_dir, head, branch, await _identity(root), await _submodules(root))


def _existing_dir(path: Path) -> Path:
    if not path.is_absolute():
        raise InvalidArgument(f"workspace path {str(path)!r} must be absolute (the CLI resolves it)")
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist", hint="pass the path of a git repository")
    return path if path.is_dir() else path.parent


async def _identity(root: Path) -> dict[str, str]:
    found = {}
    for key in ("user.name", "user.email"):
        value = (await git(root, "config", "--get", key, check=False)).strip()
        if value:
            found[key] = value
    return found


async def _submodules(root: Path) -> tuple[str, ...]:
    staged = await git(root, "ls-files", "-z", "--stage")
    return tuple(rec.split("\t", 1)[1] for rec in staged.split("\0") if rec.startswith(GITLINK + " "))


async def resolve_commit(root: Path, ref: str) -> str:
    """The 40-hex commit ``ref`` names in the repository at ``root``; InvalidArgument when none."""
    if ref.startswith("-"):
        raise InvalidArgument(f"{ref!r} is not a git revision")
    sha = (await git(root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)).strip()
    if not sha:
        raise InvalidArgument(f"{ref!r} does not name a commit in {root}", hint="check `git log` for the ref")
    return sha


async def check_branch_name(root: Path, name: str) -> None:
    """InvalidArgument unless ``name`` is a valid new branch name."""
    done = await run(["git", "-C", str(root), "check-ref-format", "--branch", name], check=False)
    if done.returncode != 0 or name.startswith("-"):
        raise InvalidArgument(f"{name!r} is not a valid git branch name")


async def work_tree_entries(info: RepoInfo, *, include_untracked: bool, recurse_submodules: bool) -> list[Entry]:
    """Tracked files that exist in the work tree (plus untracked, non-ignored ones), with sizes."""
    tracked_args = ["ls-files", "-z", "--cached"] + (["--recurse-submodules"] if recurse_submodules else [])
    names = _split(await git(info.root, *tracked_args))
    if include_untracked:
        names += _split(await git(info.root, "ls-files", "-z", "--others", "--exclude-standard"))
    submodules = set(info.submodules)
    if recurse_submodules:  # a submodule's `.git` file points into the shipped .git/modules
        names += [f"{s}/.git" for s in submodules if os.path.lexists(info.root / s / ".git")]
    return [Entry(n, _size(info.root / n)) for n in dict.fromkeys(names)
            if n not in submodules and os.path.lexists(info.root / n)]


def git_dir_entries(git_dir: Path) -> list[Entry]:
    """Every file and directory under ``git_dir`` (for full_copy), minus lock files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(git_dir):
        rel = os.path.relpath(dirpath, git_dir)
        for n in (*dirnames, *filenames):
            if not n.endswith(".lock"):
                p = n if rel == "." else f"{rel}/{n}"
                out.append(Entry(p, _size(git_dir / p)))
    return out


async def history_bytes(root: Path, commit: str) -> int:
    """On-disk size of the objects of ``commit`` alone (commit, trees, blobs): a shallow ship's estimate."""
    try:
        return int((await git(root, "rev-list", "--objects", "--no-walk", "--disk-usage", commit)).strip() or 0)
    except (HostError, ValueError):
        return 0


def _split(text: str) -> list[str]:
    return [n for n in text.split("\0") if n]


def _size(path: Path) -> int:
    st = os.lstat(path)
    return 0 if stat.S_ISDIR(st.st_mode) else st.st_size
