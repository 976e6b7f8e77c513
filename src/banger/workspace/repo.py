"""Inspecting a host repository with git (through banger.host.run): root, HEAD, branch, identity, files.

The repository is the user's, and so is its configuration: host git must run nothing it names. Every
git command here goes through :func:`git_argv`/:data:`GIT_ENV`: no system config, fsmonitor off, hooks
pointed at /dev/null, no ssh command, pager, credential helper or external diff, every filter, diff and
merge driver the repository configures neutralised, and optionally as the uid that asked
(``RepoInfo.as_user``) rather than as the daemon's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import BangerError, HostError, InvalidArgument
from banger.host.run import run, run_sync

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
    drivers: tuple[str, ...] = ()  # filter/diff/merge driver keys the repo configures, blanked on every call
    as_user: tuple[int, int] | None = None  # (uid, gid) git runs as, when not the daemon's own


@dataclass(frozen=True)
class Entry:
    """One path to ship, relative to the repository root, with its size in bytes."""

    path: str
    size: int


# What a repository's config could make host git run, switched off on every command line (which wins).
SAFE_CONFIG = (
    "core.fsmonitor=false", "core.hooksPath=/dev/null", "core.sshCommand=false", "core.pager=cat",
    "core.askPass=false", "core.gitProxy=", "core.editor=false", "credential.helper=", "diff.external=",
    "protocol.allow=never", "uploadpack.packObjectsHook=", "sequence.editor=false",
)  # fmt: skip
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_ATTR_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "false",
    "GIT_SSH_COMMAND": "false", "GIT_PAGER": "cat", "GIT_OPTIONAL_LOCKS": "0", "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
}  # fmt: skip
_DRIVER_KEYS = re.compile(r"^(filter|diff|merge)\.[^\0]+\.(clean|smudge|process|command|textconv|driver|required)$")


def git_argv(root: Path, *args: str, drivers: tuple[str, ...] = ()) -> list[str]:
    """The hardened ``git -C root ARGS`` command line (``drivers``: config keys to blank, see below)."""
    blanked = (f"{k}=false" if k.endswith(".required") else f"{k}=" for k in drivers)
    overrides = [item for c in (*SAFE_CONFIG, *blanked) for item in ("-c", c)]
    return ["git", *overrides, "-C", str(root), *args]


async def configured_drivers(root: Path, as_user: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The filter/diff/merge driver commands the repository's config names (to be blanked on each call)."""
    done = await run([*git_argv(root, "config", "--null", "--name-only", "--get-regexp",
                                r"^(filter|diff|merge)\."), ], check=False, env=GIT_ENV, as_user=as_user)
    return tuple(sorted({k for k in done.out.split("\0") if _DRIVER_KEYS.match(k)}))


async def git(info: RepoInfo | Path, *args: str, check: bool = True, input: bytes | None = None) -> str:
    """``git -C root ARGS`` stdout as text (HostError with git's stderr on failure when ``check``)."""
    root, drivers, as_user = (info.root, info.drivers, info.as_user) if isinstance(info, RepoInfo) else \
        (info, (), None)
    done = await run(git_argv(root, *args, drivers=drivers), check=check, input=input, env=GIT_ENV,
                     as_user=as_user)
    return done.out if done.returncode == 0 else ""


async def inspect(path: Path, *, as_user: tuple[int, int] | None = None) -> RepoInfo:
    """The repository holding ``path``; InvalidArgument for anything prepare cannot ship."""
    path = _existing_dir(path)
    probe = await run(git_argv(path, "rev-parse", "--is-bare-repository"), check=False, env=GIT_ENV,
                      as_user=as_user)
    if probe.returncode != 0:
        raise InvalidArgument(f"{path} is not inside a git repository",
                              hint="`git init` it and commit, or pass the path of a repository")
    if probe.out.strip() == "true":
        raise InvalidArgument(f"{path} is a bare repository: it has no work tree to ship",
                              hint="clone it (`git clone BARE DIR`) and prepare the clone")
    where = (await run(git_argv(path, "rev-parse", "--show-toplevel", "--absolute-git-dir"), check=False,
                       env=GIT_ENV, as_user=as_user)).out.splitlines()
    if len(where) < 2:
        raise InvalidArgument(f"{path} is inside a git directory, not a work tree",
                              hint="pass the work tree's path")
    root, git_dir = Path(where[0]), Path(where[1])
    base = RepoInfo(root, git_dir, "", None, drivers=await configured_drivers(root, as_user), as_user=as_user)
    head = (await git(base, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)).strip()
    if not head:
        raise InvalidArgument(f"the repository {root} has no commits yet",
                              hint="commit something first (`git commit --allow-empty -m init` will do)")
    branch = (await git(base, "symbolic-ref", "-q", "--short", "HEAD", check=False)).strip() or None
    return dataclasses.replace(base, head=head, branch=branch, identity=await _identity(base),
                               submodules=await _submodules(base))


def _existing_dir(path: Path) -> Path:
    if not path.is_absolute():
        raise InvalidArgument(f"workspace path {str(path)!r} must be absolute (the CLI resolves it)")
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist", hint="pass the path of a git repository")
    return path if path.is_dir() else path.parent


async def _identity(root: RepoInfo) -> dict[str, str]:
    found = {}
    for key in ("user.name", "user.email"):
        value = (await git(root, "config", "--get", key, check=False)).strip()
        if value:
            found[key] = value
    return found


async def _submodules(root: RepoInfo) -> tuple[str, ...]:
    staged = await git(root, "ls-files", "-z", "--stage")
    return tuple(rec.split("\t", 1)[1] for rec in staged.split("\0") if rec.startswith(GITLINK + " "))


def head_of(path: Path) -> str | None:
    """The commit HEAD of the repository at ``path`` points at, or None when there is none (blocking: for
    the CLI, which runs as the repository's user and has no event loop)."""
    try:
        done = run_sync(git_argv(path, "rev-parse", "--verify", "-q", "HEAD^{commit}"), check=False, env=GIT_ENV,
                        timeout=10)
    except BangerError:  # no git on this host, or it hung
        return None
    head = done.out.strip()
    return head if done.returncode == 0 and head else None


async def resolve_commit(info: RepoInfo, ref: str) -> str:
    """The 40-hex commit ``ref`` names in the repository; InvalidArgument when none."""
    if ref.startswith("-"):
        raise InvalidArgument(f"{ref!r} is not a git revision")
    sha = (await git(info, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)).strip()
    if not sha:
        raise InvalidArgument(f"{ref!r} does not name a commit in {info.root}", hint="check `git log` for the ref")
    return sha


async def check_branch_name(info: RepoInfo, name: str) -> None:
    """InvalidArgument unless ``name`` is a valid new branch name."""
    done = await run(git_argv(info.root, "check-ref-format", "--branch", name), check=False, env=GIT_ENV,
                     as_user=info.as_user)
    if done.returncode != 0 or name.startswith("-"):
        raise InvalidArgument(f"{name!r} is not a valid git branch name")


async def work_tree_entries(info: RepoInfo, *, include_untracked: bool, recurse_submodules: bool) -> list[Entry]:
    """Tracked files that exist in the work tree (plus untracked, non-ignored ones), with sizes."""
    tracked_args = ["ls-files", "-z", "--cached"] + (["--recurse-submodules"] if recurse_submodules else [])
    names = _split(await git(info, *tracked_args))
    if include_untracked:
        names += _split(await git(info, "ls-files", "-z", "--others", "--exclude-standard"))
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


async def history_bytes(root: RepoInfo, commit: str) -> int:
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
