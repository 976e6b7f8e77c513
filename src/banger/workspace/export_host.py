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
import shutil
import struct
import tarfile
import zlib
from collections.abc import Awaitable, Iterator
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
    # The clean-up runs after the last byte is sent, in the background: the export need not wait for it.
    s.raw("trap 'rm -rf \"$t\" </dev/null >/dev/null 2>&1 &' EXIT")
    # Four read-only passes, side by side (a guest has two vCPUs; each pass is mostly stat and git's start).
    s.raw("export GIT_OPTIONAL_LOCKS=0")
    s.raw('git diff --name-status --no-renames -z "$base" HEAD > "$t/commits" & p1=$!')
    s.raw('git diff-files --name-only -z > "$t/files" & p2=$!')
    s.raw('git diff-index --cached --name-status --no-renames -z HEAD > "$t/index" & p3=$!')
    s.raw('git ls-files -z --others --exclude-standard > "$t/untracked" & p4=$!')
    s.raw('wait "$p1"; wait "$p2"; wait "$p3"; wait "$p4"')
    # Every process costs tens of milliseconds under emulation, so few run from here on: sed only for a
    # status list that is not empty (usually both are), one cat for the whole header, and tar reads the
    # name lists as they are.
    s.raw(': > "$t/pairs"')
    s.raw('for list in commits index; do '
          'if [ -s "$t/$list" ]; then sed -z -n \'n;p\' "$t/$list" >> "$t/pairs"; fi; done')
    s.raw('printf \'\\0\' > "$t/end"')
    s.raw('printf "%s\\0" "$base"')
    s.raw('cat "$t/commits" "$t/end" "$t/files" "$t/end" "$t/index" "$t/end" "$t/untracked" "$t/end"')
    # --hard-dereference: a second name of a hard link is sent as the file it is, not as a link entry.
    s.raw('tar -c -f - --null --no-recursion --hard-dereference --ignore-failed-read --warning=no-failed-read '
          '-T "$t/pairs" -T "$t/files" -T "$t/untracked"')
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
    """The guest's blobs, written by the host into one throwaway pack (by hash; ``git index-pack`` indexes
    it in :meth:`finish`). One file rather than a loose object per blob: creating a thousand small files
    cost more than all the rest of the host's side of an export."""

    def __init__(self, root: Path, algorithm: str):
        self.root = root
        self.algorithm = algorithm
        self._oids: set[str] = set()
        self._pack: BinaryIO | None = None
        self._closed = False

    def blob(self, data: bytes) -> str:
        digest = hashlib.new(self.algorithm, b"blob %d\0" % len(data))
        digest.update(data)
        oid = digest.hexdigest()
        if oid not in self._oids:
            if self._closed:  # the export was given up while this thread still read the guest's tar
                raise GuestError("the export was stopped")
            self._oids.add(oid)
            if self._pack is None:
                (self.root / "pack").mkdir(parents=True, exist_ok=True)
                self._pack = open(self.root / "pack" / "incoming", "w+b")  # noqa: SIM115 (closed by finish)
                self._pack.write(b"PACK" + struct.pack(">II", 2, 0))  # the count is filled in by finish
            # Stored, not compressed: the pack lives for one diff, and deflating costs more than it saves.
            self._pack.write(_pack_entry_header(len(data)) + zlib.compress(data, 0))
        return oid

    async def finish(self, info: repo.RepoInfo) -> None:
        """Seal the pack (object count, trailing checksum) and index it, so git can read the blobs."""
        sealed = await asyncio.to_thread(self._seal)  # up to MAX_SENT bytes re-read and hashed: off the loop
        if sealed is not None:
            await run(repo.git_argv(info.root, "index-pack", str(sealed), drivers=info.drivers),
                      env=repo.GIT_ENV, as_user=info.as_user)

    def _seal(self) -> Path | None:
        if self._pack is None:
            return None
        pack, self._pack = self._pack, None
        with pack:
            pack.seek(8)
            pack.write(struct.pack(">I", len(self._oids)))
            pack.seek(0)
            digest = hashlib.new(self.algorithm)
            while chunk := pack.read(1 << 20):
                digest.update(chunk)
            pack.write(digest.digest())
        sealed = self.root / "pack" / f"pack-{digest.hexdigest()}.pack"
        os.rename(self.root / "pack" / "incoming", sealed)
        return sealed

    def close(self) -> None:
        """Drop an unfinished pack (an export that failed part way); later blobs are refused."""
        self._closed = True
        if self._pack is not None:
            self._pack.close()
            self._pack = None


def _pack_entry_header(size: int) -> bytes:
    """A pack entry's type-and-size header for a whole (undeltified) blob: type 3, size in 4 then 7-bit
    groups, low bits first, the top bit saying another byte follows."""
    out = bytearray([0x30 | (size & 0x0F)])
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


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
    in_base = frozenset(await _git_names(info, env, "ls-files", "-z"))
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
    try:
        entries = await asyncio.to_thread(lambda: list(staged_entries(stream, changes, staged.in_base,
                                                                      staged.objects)))
        await staged.objects.finish(info)
    finally:
        staged.objects.close()
    for mode, oid, name in entries:
        present.add(name)
        lines.append(f"{mode} {oid}\t{name}\0")
    lines += [f"0 {staged.zero}\t{name}\0" for name in changes.names if name not in present]
    env = staged.env
    await _git(info, env, "update-index", "-z", "--index-info", input="".join(lines).encode(errors="surrogateescape"))
    names = await _git_names(info, env, *HOST_DIFF, "--name-only", "-z", changes.base)
    await _write_diff(info, env, changes.base, names, dest, scratch)
    return changes.base, [n.encode(errors="surrogateescape").decode(errors="replace") for n in names]


async def _write_diff(info: repo.RepoInfo, env: dict[str, str], base: str, names: list[str], dest: Path,
                      scratch: Path) -> None:
    """The binary patch of the staged index against ``base`` into ``dest``: made in two halves side by side
    when :func:`_halves` says that prints the same bytes (binary hunks are git's slowest part, and a
    host has two cores or more)."""
    def diff(paths: list[str], out: BinaryIO) -> Awaitable[object]:
        argv = repo.git_argv(info.root, *HOST_DIFF, "--binary", "--full-index", base, "--", *paths,
                             drivers=info.drivers)
        return run(argv, env={**repo.GIT_ENV, **env, "GIT_LITERAL_PATHSPECS": "1"}, as_user=info.as_user,
                   stdout=out.fileno())

    halves = _halves(names)
    with open(dest, "wb") as out:
        if halves is None:
            await diff([], out)
            return
        scratch.mkdir(parents=True, exist_ok=True)
        with open(scratch / "second-half.patch", "w+b") as second:
            await asyncio.gather(diff(halves[0], out), diff(halves[1], second))
            second.seek(0)
            out.seek(0, os.SEEK_END)
            await asyncio.to_thread(shutil.copyfileobj, second, out, 1 << 20)


def _halves(names: list[str]) -> tuple[list[str], list[str]] | None:
    """``names``, in the order git printed them, cut in the middle, when two diffs limited to each half
    print exactly the whole diff one after the other: with --no-renames every path's hunk stands alone, but
    a pathspec also matches what lies under it, so no name in one half may be a directory of one in the
    other. None when that does not hold, or the list is too short or too long to gain."""
    # git matches every index entry against every pathspec, so a half of thousands of names costs more
    # than the whole diff saves: only a few hundred to two thousand names are cut.
    if not 64 <= len(names) <= 2000:
        return None
    mid = len(names) // 2
    first, second = names[:mid], names[mid:]

    def dirs(group: list[str]) -> set[str]:
        return {name[:i] for name in group for i, c in enumerate(name) if c == "/"}

    if dirs(first) & set(second) or dirs(second) & set(first):
        return None
    return first, second


async def _objects_dir(info: repo.RepoInfo) -> str:
    """The host repository's object directory (a linked worktree's is its main repository's)."""
    path = (await repo.git(info, "rev-parse", "--git-path", "objects")).strip()
    return str(info.root / path) if path and not path.startswith("/") else path


async def _git_names(info: repo.RepoInfo, env: dict[str, str], *args: str) -> list[str]:
    """The NUL-separated paths ``git ARGS`` prints, exact (surrogate-escaped like the guest's): a decoded
    name would not match one that is not UTF-8, nor work as a pathspec for it."""
    done = await run(repo.git_argv(info.root, *args, drivers=info.drivers), env={**repo.GIT_ENV, **env},
                     as_user=info.as_user)
    return [os.fsdecode(n) for n in done.stdout.split(b"\0") if n]


async def _git(info: repo.RepoInfo, env: dict[str, str], *args: str, input: bytes | None = None) -> str:
    done = await run(repo.git_argv(info.root, *args, drivers=info.drivers), env={**repo.GIT_ENV, **env},
                     input=input, as_user=info.as_user)
    return done.out

