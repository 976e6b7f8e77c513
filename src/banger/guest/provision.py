"""What the host hands a VM at every start, on a small read-only config disk it builds fresh.

Each start delivers ``/root/.ssh/authorized_keys`` (banger's key), ``/root/.gitconfig`` (the host user's
git name and email, when set), every ``[[file_sync]]`` entry of config.toml and the VM's SSH host key (made
by the daemon before the first boot and pinned then). Planning (:func:`plan_files`) checks and reads the
host side; :func:`build_config_disk` makes an ext4 image of it with ``mkfs.ext4 -d`` (no mount), which the
guest's ``banger-config`` copies into place. The host never writes, or parses, the guest's work disk.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from banger.config import FileSync
from banger.errors import InvalidArgument, ToolMissing
from banger.host import ext4
from banger.host.run import run

AUTHORIZED_KEYS = PurePosixPath(".ssh/authorized_keys")
GITCONFIG = PurePosixPath(".gitconfig")
GUEST_HOME = PurePosixPath("/root")
# Guest names stay plain: they become paths in the guest and arguments of its shell script.
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


# --- the config disk -----------------------------------------------------------------------------

CONFIG_LABEL = "banger-config"
CONFIG_DISK = "config.ext4"
CONFIG_MIN_SIZE = 16 << 20


def stage_config_tree(tree: Path, files: Sequence[FileToWrite], host_key: tuple[bytes, bytes] | None) -> None:
    """Lay out the config disk's tree: ``root/<path>`` for each file, ``ssh/`` for the VM's host key."""
    root = tree / "root"
    root.mkdir(parents=True, mode=0o700)
    for f in files:
        target = root / f.path
        for parent in reversed(target.relative_to(root).parents[:-1]):
            (root / parent).mkdir(mode=0o700, exist_ok=True)
        if f.parent_mode is not None:
            os.chmod(target.parent, f.parent_mode)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, f.mode)
        with os.fdopen(fd, "wb") as out:
            out.write(f.content)
        os.chmod(target, f.mode)
    if host_key is not None:
        ssh_dir = tree / "ssh"
        ssh_dir.mkdir(mode=0o700)
        private, public = host_key
        for name, data, mode in (("ssh_host_ed25519_key", private, 0o600), ("ssh_host_ed25519_key.pub", public, 0o644)):
            (ssh_dir / name).write_bytes(data)
            os.chmod(ssh_dir / name, mode)


async def build_config_disk(dest: Path, files: Sequence[FileToWrite], host_key: tuple[bytes, bytes] | None) -> None:
    """Build the read-only config disk ``dest`` afresh from host-side bytes (the guest only ever reads it).

    Replaces what the host used to write into the work disk with ``debugfs -w``: the host never opens a
    disk the guest has written. ``images/files/banger-config`` in the guest copies it into place.
    """
    with tempfile.TemporaryDirectory(prefix=".config-", dir=dest.parent) as tmp:
        tree = Path(tmp) / "tree"
        stage_config_tree(tree, files, host_key)
        size = max(ext4.size_for_tree(tree, minimum=CONFIG_MIN_SIZE), CONFIG_MIN_SIZE)
        staged = Path(tmp) / CONFIG_DISK
        await ext4.make_from_tree(tree, staged, size, label=CONFIG_LABEL)
        if os.geteuid() != 0:  # the guest copies /root's own owner and mode from here (cp -p)
            await ext4.own_by_root(staged, [f"/{d.name}" for d in sorted(tree.iterdir())])
        os.chmod(staged, 0o600)
        os.replace(staged, dest)
