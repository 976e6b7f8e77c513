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

import hashlib
import os
import tarfile
import zlib
from collections.abc import Iterator
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
    """The guest side: ``base\\0``, the candidate paths each NUL-terminated, ``\\0``, then a tar of the
    ones ``git add -A`` would stage (tracked, or untracked and not ignored). Writes nothing in the repo."""
    s = patch.check_base(guest, base)
    s.raw('t=$(mktemp -d "${TMPDIR:-/tmp}/banger-export.XXXXXX")')
    s.raw("trap 'rm -rf \"$t\"' EXIT")
    s.raw('git diff --name-only --no-renames -z "$base" HEAD > "$t/changed"')
    s.raw('git diff-files --name-only -z >> "$t/changed"')
    s.raw('git diff-index --cached --name-only --no-renames -z HEAD >> "$t/changed"')
    s.raw('git ls-files -z --others --exclude-standard > "$t/untracked"')
    # Of the changed paths, the ones still tracked (an empty pathspec would mean every path: -r).
    s.raw('GIT_LITERAL_PATHSPECS=1 xargs -0 -r git ls-files -z --cached -- < "$t/changed" > "$t/send"')
    s.raw('cat "$t/untracked" >> "$t/send"')
    s.raw('printf "%s\\0" "$base"')
    s.raw('cat "$t/changed" "$t/untracked"')
    s.raw("printf '\\0'")
    s.raw('tar -c -f - --null --no-recursion --ignore-failed-read --warning=no-failed-read -T "$t/send"')
    return s.render()


@dataclass(frozen=True)
class Changes:
    base: str
    names: list[str]


def read_header(stream: BinaryIO, limit: int = 64 << 20) -> Changes:
    """The base and candidate list at the start of :func:`changes_script` output (the tar follows)."""
    head = bytearray()
    while not head.endswith(b"\0\0"):
        byte = stream.read(1)
        if not byte:
            raise GuestError("the guest's change list ended early")
        head += byte
        if len(head) > limit:
            raise GuestError("the guest's change list is too long")
    fields = head[:-2].decode(errors="surrogateescape").split("\0")
    if not plan.COMMIT_RE.fullmatch(fields[0]):
        raise GuestError(f"the guest sent no base commit ({fields[0][:80]!r})")
    return Changes(fields[0], [_checked(n) for n in fields[1:] if n])


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


def staged_entries(stream: BinaryIO, changes: Changes, objects: Objects) -> Iterator[tuple[str, str, str]]:
    """(mode, object id, path) for each file of the guest's tar, checked against its own list."""
    allowed = set(changes.names)
    sent = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name not in allowed:
                raise GuestError(f"the guest sent {name[:200]!r}, which it did not list")
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


async def make_patch(info: repo.RepoInfo, stream: BinaryIO, scratch: Path, dest: Path) -> tuple[str, list[str]]:
    """Read :func:`changes_script` output from ``stream`` and write the patch against its base to
    ``dest``; (base commit, changed paths). InvalidArgument when the host repo lacks the base."""
    changes = read_header(stream)
    if (await repo.git(info, "cat-file", "-t", changes.base, check=False)).strip() != "commit":
        raise InvalidArgument(f"the host repository {info.root} no longer has the base commit {changes.base[:12]}")
    algorithm = (await repo.git(info, "rev-parse", "--show-object-format")).strip() or "sha1"
    objects_dir = scratch / "objects"
    objects_dir.mkdir(parents=True)
    objects = Objects(objects_dir, "sha256" if algorithm == "sha256" else "sha1")
    env = {"GIT_INDEX_FILE": str(scratch / "index"), "GIT_OBJECT_DIRECTORY": str(objects_dir),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": await _objects_dir(info)}
    await _git(info, env, "read-tree", changes.base)
    present: set[str] = set()
    lines = []
    for mode, oid, name in staged_entries(stream, changes, objects):
        present.add(name)
        lines.append(f"{mode} {oid}\t{name}\0")
    zero = "0" * (64 if algorithm == "sha256" else 40)
    lines += [f"0 {zero}\t{name}\0" for name in dict.fromkeys(changes.names) if name not in present]
    await _git(info, env, "update-index", "-z", "--index-info", input="".join(lines).encode(errors="surrogateescape"))
    names = (await _git(info, env, *HOST_DIFF, "--name-only", "-z", changes.base)).split("\0")
    with open(dest, "wb") as out:
        await run(repo.git_argv(info.root, *HOST_DIFF, "--binary", "--full-index", changes.base,
                                drivers=info.drivers),
                  env={**repo.GIT_ENV, **env}, as_user=info.as_user, stdout=out.fileno())
    return changes.base, [n for n in names if n]


async def _objects_dir(info: repo.RepoInfo) -> str:
    """The host repository's object directory (a linked worktree's is its main repository's)."""
    path = (await repo.git(info, "rev-parse", "--git-path", "objects")).strip()
    return str(info.root / path) if path and not path.startswith("/") else path


async def _git(info: repo.RepoInfo, env: dict[str, str], *args: str, input: bytes | None = None) -> str:
    done = await run(repo.git_argv(info.root, *args, drivers=info.drivers), env={**repo.GIT_ENV, **env},
                     input=input, as_user=info.as_user)
    return done.out

