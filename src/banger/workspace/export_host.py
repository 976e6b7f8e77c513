"""Export with the patch made on the host: the guest only says what changed and sends those files.

Under emulation the guest is the slow side: hashing, compressing and diffing a thousand files there costs
seconds. So the guest runs :func:`changes_script`: git's stat checks (nothing hashed) name the paths that
may differ from the base, and tar sends their current content. The host then stages exactly what the
guest's ``git add -A`` would have (tracked and untracked-but-not-ignored files as they are in the work
tree, the rest of the list deleted) into a throwaway index over the base commit, with the new blobs in a
throwaway object directory, and lets its own git print the patch: the same bytes the guest would have
made (a unit test holds them equal), with no guest CPU spent on diffing.

Everything from the guest is hostile: the names are checked to be plain relative paths in the list it
sent, only regular files and symlinks count, sizes are capped, and nothing is ever written to the host
under a name the guest chose (blobs go into the object directory by their hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tarfile
import zlib
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from banger.errors import GuestError, InvalidArgument
from banger.host.run import run
from banger.workspace import patch, plan, repo

MAX_SENT = patch.MAX_PATCH  # file bytes a guest may send for one export
# The guest's diff, with what a host user's git config could change about it pinned (prefixes, context).
HOST_DIFF = (*patch.DIFF.split()[1:], "--src-prefix=a/", "--dst-prefix=b/", "-U3")


def changes_script(guest: str, base: str) -> str:
    """The guest side: ``base``, then four lists (commits since base and the index against HEAD as git's
    ``--name-status -z`` pairs; work-tree files that differ from the index; untracked files that are not
    ignored), each field NUL-terminated and each list ended by an empty field; then a tar of every path
    named that exists. Only git's stat checks run (nothing is hashed) and nothing in the repo is written."""
    s = patch.check_base(guest, base)
    s.raw('t=$(mktemp -d "${TMPDIR:-/tmp}/banger-export.XXXXXX")')
    s.raw("trap 'rm -rf \"$t\"' EXIT")
    # Four read-only passes, side by side (a guest has two vCPUs; each pass is mostly stat and git's start).
    s.raw("export GIT_OPTIONAL_LOCKS=0")
    s.raw('git diff --name-status --no-renames -z "$base" HEAD > "$t/commits" & p1=$!')
    s.raw('git diff-files --name-only -z > "$t/files" & p2=$!')
    s.raw('git diff-index --cached --name-status --no-renames -z HEAD > "$t/index" & p3=$!')
    s.raw('git ls-files -z --others --exclude-standard > "$t/untracked" & p4=$!')
    s.raw('wait "$p1"; wait "$p2"; wait "$p3"; wait "$p4"')
    s.raw("{ sed -z -n 'n;p' \"$t/commits\"; cat \"$t/files\"; sed -z -n 'n;p' \"$t/index\"; "
          'cat "$t/untracked"; } > "$t/send"')
    s.raw('printf "%s\\0" "$base"')
    s.raw('for list in commits files index untracked; do cat "$t/$list"; printf \'\\0\'; done')
    # --hard-dereference: a second name of a hard link is sent as the file it is, not as a link entry.
    s.raw('tar -c -f - --null --no-recursion --hard-dereference --ignore-failed-read --warning=no-failed-read '
          '-T "$t/send"')
    return s.render()


class GuestPatchNeeded(Exception):
    """The lists name something only the guest's own git handles (a nested repository, a conflict):
    the caller has the guest make the patch instead."""


@dataclass(frozen=True)
class Changes:
    """What the guest's lists say: its base, and for each candidate path what ``git add -A`` would do."""

    base: str
    commits: dict[str, str]  # path -> status letter between base and the guest's HEAD
    files: set[str]  # tracked paths whose work-tree file differs from the index (by stat)
    index: dict[str, str]  # path -> status letter between the guest's HEAD and its index
    untracked: set[str]  # untracked, not ignored

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.commits, *self.files, *self.index, *self.untracked]))

    def staged(self, path: str, in_base: bool) -> bool:
        """Whether ``git add -A`` in the guest would stage the work-tree file at ``path``."""
        in_head = self.commits[path] != "D" if path in self.commits else in_base
        in_index = self.index[path] != "D" if path in self.index else in_head
        return in_index or path in self.untracked


def _fields(stream: BinaryIO, limit: int) -> Iterator[str]:
    buf = bytearray()
    total = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise GuestError("the guest's change list ended early")
        total += 1
        if total > limit:
            raise GuestError("the guest's change list is too long")
        if byte == b"\0":
            yield buf.decode(errors="surrogateescape")
            buf.clear()
        else:
            buf += byte


def read_header(stream: BinaryIO, limit: int = 64 << 20) -> Changes:
    """The base and the four lists at the start of :func:`changes_script` output (the tar follows)."""
    fields = _fields(stream, limit)
    base = next(fields)
    if not plan.COMMIT_RE.fullmatch(base):
        raise GuestError(f"the guest sent no base commit ({base[:80]!r})")
    lists: list[list[str]] = []
    for _ in range(4):
        items: list[str] = []
        for field in fields:
            if not field:
                break
            items.append(field)
        lists.append(items)
    commits, files, index, untracked = lists
    if any(n.endswith("/") for n in untracked):  # an untracked nested repository
        raise GuestPatchNeeded("an untracked nested repository")
    return Changes(base, _pairs(commits), {_checked(n) for n in files}, _pairs(index),
                   {_checked(n) for n in untracked})


def _pairs(items: list[str]) -> dict[str, str]:
    if len(items) % 2:
        raise GuestError("the guest sent a malformed status list")
    out = {}
    for status, name in zip(items[::2], items[1::2], strict=True):
        if status == "U":  # an unmerged path: git add -A would resolve it as the work tree has it
            raise GuestPatchNeeded("an unmerged path")
        if status not in ("A", "D", "M", "T"):
            raise GuestError(f"the guest sent an unknown status {status[:10]!r}")
        out[_checked(name)] = status
    return out


def _checked(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise GuestError(f"the guest named a path outside its work tree: {name[:200]!r}")
    return name


class Objects:
    """A throwaway loose-object directory the host writes the guest's blobs into (by hash)."""

    def __init__(self, root: Path, algorithm: str):
        self.root = root
        self.algorithm = algorithm

    def blob(self, data: bytes) -> str:
        body = b"blob %d\0" % len(data) + data
        oid = hashlib.new(self.algorithm, body).hexdigest()
        path = self.root / oid[:2] / oid[2:]
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(zlib.compress(body, 1))
        return oid


def staged_entries(stream: BinaryIO, changes: Changes, in_base: AbstractSet[str],
                   objects: Objects) -> Iterator[tuple[str, str, str]]:
    """(mode, object id, path) for each file of the guest's tar that ``git add -A`` would stage, checked
    against the guest's own lists."""
    allowed = set(changes.names)
    sent = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name not in allowed:
                raise GuestError(f"the guest sent {name[:200]!r}, which it did not list")
            if not changes.staged(name, name in in_base):
                continue
            if member.isreg():
                sent += member.size
                if sent > MAX_SENT:
                    raise GuestError(f"the guest's changed files are over {MAX_SENT >> 20} MiB",
                                     hint="commit and push from the guest instead")
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                yield ("100755" if member.mode & 0o100 else "100644"), objects.blob(data), name
            elif member.issym():
                yield "120000", objects.blob(os.fsencode(member.linkname)), name


@dataclass(frozen=True)
class Staging:
    """A throwaway index holding ``base``'s tree, and an object directory for the guest's blobs (the host
    repository's objects as alternates): everything but the guest's files, ready before they arrive."""

    base: str
    env: dict[str, str]  # GIT_INDEX_FILE, GIT_OBJECT_DIRECTORY, GIT_ALTERNATE_OBJECT_DIRECTORIES
    objects: Objects
    in_base: frozenset[str]  # the paths of base's tree
    zero: str  # the null object id of the repository's hash


async def stage_base(info: repo.RepoInfo, base: str, scratch: Path) -> Staging:
    """:class:`Staging` over commit ``base``. InvalidArgument when the host repo lacks it. Needs nothing from
    the guest, so the daemon runs it while the guest is still listing and sending its changes."""
    kind, algorithm, objects_of = await asyncio.gather(
        repo.git(info, "cat-file", "-t", base, check=False), repo.git(info, "rev-parse", "--show-object-format"),
        _objects_dir(info))
    if kind.strip() != "commit":
        raise InvalidArgument(f"the host repository {info.root} no longer has the base commit {base[:12]}")
    algorithm = algorithm.strip() or "sha1"
    objects_dir = scratch / "objects"
    objects_dir.mkdir(parents=True)
    env = {"GIT_INDEX_FILE": str(scratch / "index"), "GIT_OBJECT_DIRECTORY": str(objects_dir),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": objects_of}
    await _git(info, env, "read-tree", base)
    in_base = frozenset((await _git(info, env, "ls-files", "-z")).split("\0"))
    return Staging(base, env, Objects(objects_dir, "sha256" if algorithm == "sha256" else "sha1"), in_base,
                   "0" * (64 if algorithm == "sha256" else 40))


async def make_patch(info: repo.RepoInfo, stream: BinaryIO, scratch: Path, dest: Path,
                     staged: Staging | None = None) -> tuple[str, list[str]]:
    """Read :func:`changes_script` output from ``stream`` and write the patch against its base to
    ``dest``; (base commit, changed paths). ``staged``: :func:`stage_base` done ahead (used only when it is
    over the base the guest resolved). InvalidArgument when the host repo lacks the base."""
    changes = await asyncio.to_thread(read_header, stream)
    if staged is None or staged.base != changes.base:
        staged = await stage_base(info, changes.base, scratch / "base")
    present: set[str] = set()
    lines = []
    # Parsing, hashing and compressing up to MAX_SENT bytes: off the event loop.
    entries = await asyncio.to_thread(lambda: list(staged_entries(stream, changes, staged.in_base, staged.objects)))
    for mode, oid, name in entries:
        present.add(name)
        lines.append(f"{mode} {oid}\t{name}\0")
    lines += [f"0 {staged.zero}\t{name}\0" for name in changes.names if name not in present]
    env = staged.env
    await _git(info, env, "update-index", "-z", "--index-info", input="".join(lines).encode(errors="surrogateescape"))
    with open(dest, "wb") as out:  # the names and the patch: two read-only diffs of one index, side by side
        names, _ = await asyncio.gather(
            _git(info, env, *HOST_DIFF, "--name-only", "-z", changes.base),
            run(repo.git_argv(info.root, *HOST_DIFF, "--binary", "--full-index", changes.base, drivers=info.drivers),
                env={**repo.GIT_ENV, **env}, as_user=info.as_user, stdout=out.fileno()))
    return changes.base, [n for n in names.split("\0") if n]


async def _objects_dir(info: repo.RepoInfo) -> str:
    """The host repository's object directory (a linked worktree's is its main repository's)."""
    path = (await repo.git(info, "rev-parse", "--git-path", "objects")).strip()
    return str(info.root / path) if path and not path.startswith("/") else path


async def _git(info: repo.RepoInfo, env: dict[str, str], *args: str, input: bytes | None = None) -> str:
    done = await run(repo.git_argv(info.root, *args, drivers=info.drivers), env={**repo.GIT_ENV, **env},
                     input=input, as_user=info.as_user)
    return done.out

