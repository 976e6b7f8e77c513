"""Files put into a VM's work disk (``/root`` in the guest) before it starts, offline, with ``debugfs -w``.

Each start writes ``/root/.ssh/authorized_keys`` (banger's key), ``/root/.gitconfig`` (the host user's
git name and email, when set) and every ``[[file_sync]]`` entry of config.toml. Planning
(:func:`plan_files`) checks and reads the host side; :func:`write_files` writes the plan into the ext4
image without mounting it, overwriting what a previous start wrote. The image must not be in use.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from banger.config import FileSync
from banger.errors import HostError, InvalidArgument, ToolMissing
from banger.host.run import run

AUTHORIZED_KEYS = PurePosixPath(".ssh/authorized_keys")
GITCONFIG = PurePosixPath(".gitconfig")
GUEST_HOME = PurePosixPath("/root")
# debugfs splits its requests on whitespace and has no reliable quoting: keep guest names plain.
_SAFE_GUEST = re.compile(r"^[A-Za-z0-9._@+,=~-]+$")


@dataclass(frozen=True)
class FileToWrite:
    """A file for the work disk: ``path`` relative to its root (= /root in the guest)."""

    path: PurePosixPath
    content: bytes
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    parent_mode: int | None = None  # force the containing directory's mode (0700 for .ssh)


@dataclass(frozen=True)
class GitIdentity:
    """The host user's ``user.name`` / ``user.email`` (either may be empty)."""

    name: str
    email: str


def authorized_keys_file(public_key_line: str) -> FileToWrite:
    """``/root/.ssh/authorized_keys`` holding banger's public key (0600, in a 0700 ``.ssh``)."""
    line = public_key_line.strip()
    if not line or "\n" in line:
        raise InvalidArgument("banger's public key must be a single authorized_keys line")
    return FileToWrite(AUTHORIZED_KEYS, (line + "\n").encode(), 0o600, parent_mode=0o700)


def gitconfig_file(identity: GitIdentity) -> FileToWrite | None:
    """``/root/.gitconfig`` naming the host user, or None when neither name nor email is set."""
    fields = [(k, v) for k, v in (("name", identity.name), ("email", identity.email)) if v]
    if not fields:
        return None
    body = "".join(f"\t{k} = {_git_quote(v)}\n" for k, v in fields)
    return FileToWrite(GITCONFIG, f"[user]\n{body}".encode(), 0o644)


def _git_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def host_source(index: int, entry: FileSync, home: Path) -> Path:
    """The host file of ``file_sync[index]``, resolved; InvalidArgument unless it is under ``home``."""
    raw = entry.host.strip()
    if raw.startswith("~") and not (raw == "~" or raw.startswith("~/")):
        raise InvalidArgument(f"file_sync[{index}]: host {raw!r}: only ~/ (your own home) is allowed")
    path = home / raw[2:] if raw.startswith("~") else Path(raw) if raw.startswith("/") else home / raw
    root = home.resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidArgument(
            f"file_sync[{index}]: host {raw!r} resolves to {resolved}, which is not inside your home {root}",
            hint="file_sync copies files from under your home directory only",
        )
    return resolved


def guest_target(index: int, entry: FileSync) -> PurePosixPath:
    """The guest path of ``file_sync[index]`` relative to /root; InvalidArgument if it leaves /root."""
    raw = entry.guest.strip()
    path = PurePosixPath(raw)
    if path.is_absolute():
        if not path.is_relative_to(GUEST_HOME):
            raise InvalidArgument(f"file_sync[{index}]: guest {raw!r} is not under /root")
        path = path.relative_to(GUEST_HOME)
    parts = path.parts
    if not parts or ".." in parts:
        raise InvalidArgument(f"file_sync[{index}]: guest {raw!r} must name a file under /root, without '..'")
    bad = next((p for p in parts if not _SAFE_GUEST.match(p)), None)
    if bad is not None:
        raise InvalidArgument(f"file_sync[{index}]: guest {raw!r}: {bad!r} has characters banger cannot write "
                              "(use letters, digits and . _ - @ + , = ~)")
    if path == AUTHORIZED_KEYS:
        raise InvalidArgument(f"file_sync[{index}]: guest {raw!r} is managed by banger (its SSH key)")
    return path


def plan_files(
    entries: Sequence[FileSync],
    home: Path,
    *,
    public_key_line: str,
    git_identity: GitIdentity | None = None,
) -> tuple[list[FileToWrite], list[str]]:
    """Every file to write into the work disk, and warnings about file_sync sources that are missing.

    Invalid entries raise InvalidArgument naming ``file_sync[i]``; a file_sync entry for ``.gitconfig``
    replaces the generated one (the user asked for it explicitly).
    """
    planned: dict[PurePosixPath, FileToWrite] = {AUTHORIZED_KEYS: authorized_keys_file(public_key_line)}
    gitconfig = gitconfig_file(git_identity) if git_identity else None
    if gitconfig:
        planned[GITCONFIG] = gitconfig
    warnings: list[str] = []
    for index, entry in enumerate(entries):
        target = guest_target(index, entry)
        source = host_source(index, entry, home)
        content = _read_source(index, entry, source, warnings)
        if content is not None:
            planned[target] = FileToWrite(target, content, int(entry.mode, 8))
    return list(planned.values()), warnings


def _read_source(index: int, entry: FileSync, source: Path, warnings: list[str]) -> bytes | None:
    if not source.exists():
        warnings.append(f"file_sync[{index}]: {entry.host} does not exist on this host; skipped")
        return None
    if not source.is_file():
        raise InvalidArgument(f"file_sync[{index}]: host {entry.host!r} is not a regular file")
    try:
        return source.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"file_sync[{index}]: cannot read {source}: {exc.strerror}") from exc


async def host_git_identity(home: Path | None = None) -> GitIdentity | None:
    """The host user's global git name and email (``home``'s config when given); None when unset."""
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")} if home else None
    values = []
    for key in ("user.name", "user.email"):
        try:
            done = await run(["git", "config", "--global", "--get", key], check=False, env=env, timeout=10)
        except ToolMissing:
            return None
        values.append(done.out.strip() if done.returncode == 0 else "")
    return GitIdentity(*values) if any(values) else None


# --- the debugfs writer -------------------------------------------------------------------------------


def parent_dirs(files: Sequence[FileToWrite]) -> list[PurePosixPath]:
    """Every directory the files live in, parents first, without duplicates (the root excluded)."""
    seen: dict[PurePosixPath, None] = {}
    for f in files:
        for parent in reversed(f.path.parents[:-1]):
            seen.setdefault(parent, None)
    return list(seen)


def _abs(path: PurePosixPath) -> str:
    return "/" + str(path)


def parse_stat_types(output: str) -> dict[str, str]:
    """``{path: "directory" | "regular" | ...}`` from debugfs ``-f`` output of ``stat PATH`` requests.

    debugfs echoes each request as ``debugfs: stat PATH`` on stdout; a path that does not exist has no
    output of its own (its error goes to stderr).
    """
    types: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("debugfs: stat "):
            current = line.removeprefix("debugfs: stat ").strip()
        elif current and (m := re.search(r"Type: (\S+)", line)):
            types[current] = m.group(1)
            current = None
    return types


def write_requests(files: Sequence[FileToWrite], existing: dict[str, str], sources: Sequence[Path]) -> list[str]:
    """The ``debugfs -w`` requests that write ``files`` (host copies in ``sources``) given ``existing``."""
    requests: list[str] = []
    forced = {f.path.parent: f.parent_mode for f in files if f.parent_mode is not None}
    for d in parent_dirs(files):
        if d not in forced and _abs(d) in existing:
            continue
        if _abs(d) not in existing:
            requests.append(f"mkdir {_abs(d)}")
        requests += _owner_mode(_abs(d), 0o040000 | forced.get(d, 0o700), 0, 0)
    for f, src in zip(files, sources, strict=True):
        if _abs(f.path) in existing:
            requests.append(f"rm {_abs(f.path)}")
        requests.append(f"write {src} {_abs(f.path)}")
        requests += _owner_mode(_abs(f.path), 0o100000 | f.mode, f.uid, f.gid)
    return requests


def _owner_mode(path: str, mode: int, uid: int, gid: int) -> list[str]:
    return [f"sif {path} mode 0{mode:o}", f"sif {path} uid {uid}", f"sif {path} gid {gid}"]


async def write_files(work_disk: Path, files: Sequence[FileToWrite]) -> None:
    """Write ``files`` into the ext4 image ``work_disk`` (not mounted, not in use), replacing old copies."""
    if not files:
        return
    existing = await _existing(work_disk, [*parent_dirs(files), *(f.path for f in files)])
    _check_kinds(work_disk, files, existing)
    with tempfile.TemporaryDirectory(prefix="banger-provision-") as tmp:
        sources = []
        for i, f in enumerate(files):
            sources.append(Path(tmp) / str(i))
            sources[-1].write_bytes(f.content)
        requests = write_requests(files, existing, sources)
        done = await run(["debugfs", "-w", "-f", "-", work_disk], input="\n".join(requests).encode(),
                         env={"DEBUGFS_PAGER": "__none__"})
    errors = [ln for ln in done.err.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise HostError(f"writing files into the work disk {work_disk} failed: {'; '.join(errors[:5])}",
                        hint="the image may be damaged; check it with `e2fsck -fn`")


async def _existing(work_disk: Path, paths: Sequence[PurePosixPath]) -> dict[str, str]:
    requests = "\n".join(f"stat {_abs(p)}" for p in paths)
    done = await run(["debugfs", "-f", "-", work_disk], input=requests.encode(), env={"DEBUGFS_PAGER": "__none__"})
    return parse_stat_types(done.out)


def _check_kinds(work_disk: Path, files: Sequence[FileToWrite], existing: dict[str, str]) -> None:
    for d in parent_dirs(files):
        if existing.get(_abs(d), "directory") != "directory":
            raise HostError(f"/root{_abs(d)} in the work disk {work_disk} is a {existing[_abs(d)]}, not a directory",
                            hint="remove it inside the VM, or change the file_sync entry")
    for f in files:
        if existing.get(_abs(f.path)) == "directory":
            raise HostError(f"/root{_abs(f.path)} in the work disk {work_disk} is a directory; cannot write a file "
                            "there", hint="remove it inside the VM, or change the file_sync entry")
