"""``install.toml``: what ``banger system install`` recorded, read by both daemons and the CLI.

A system install splits banger in two: ``bangerd`` runs as the owner (all the logic) and ``bangerd-root`` as
root (only the checked operations of :mod:`banger.rootd`). Both, and every CLI, learn the owner and the
directories from this one root-owned file (default ``/etc/banger/install.toml``)::

    version = "0.1.0"
    owner = "alice"
    owner_uid = 1000
    owner_gid = 1000
    config_file = "/etc/banger/config.toml"     # root-owned: the helper trusts only this config
    state_dir = "/var/lib/banger"               # owner
    cache_dir = "/var/cache/banger"             # owner
    runtime_dir = "/run/banger"                 # owner, 0700: bangerd.sock
    root_runtime_dir = "/run/banger-root"       # root, 0711: bangerd-root.sock (owned by the owner, 0600)
    units_dir = "/etc/systemd/system"
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from banger import paths
from banger.errors import ConfigError, PermissionDenied
from banger.paths import Layout

ROOT_SOCKET = "bangerd-root.sock"


@dataclass(frozen=True)
class Install:
    version: str
    owner: str
    owner_uid: int
    owner_gid: int
    config_file: Path
    state_dir: Path
    cache_dir: Path
    runtime_dir: Path
    root_runtime_dir: Path
    units_dir: Path

    @property
    def layout(self) -> Layout:
        """The owner daemon's layout (the system config, state, cache and runtime directories)."""
        return Layout(self.config_file, self.state_dir, self.cache_dir, self.runtime_dir)

    @property
    def root_socket(self) -> Path:
        return self.root_runtime_dir / ROOT_SOCKET

    def to_toml(self) -> str:
        lines = ["# written by `banger system install`; `banger system uninstall` removes it"]
        for key, value in asdict(self).items():
            lines.append(f"{key} = {value if isinstance(value, int) else json.dumps(str(value))}")
        return "\n".join(lines) + "\n"


def read_install(path: Path) -> Install | None:
    """The install recorded at ``path``; None when there is none. A file anyone but root could have written
    is refused: it decides which user the root helper serves."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    fix = f"reinstall as root: `banger system install --owner USER` rewrites {path}"
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise PermissionDenied(f"{path} must be a regular file owned by root and writable only by root",
                               hint=fix)
    try:
        doc = tomllib.loads(path.read_text())
        return Install(
            version=str(doc["version"]),
            owner=str(doc["owner"]),
            owner_uid=int(doc["owner_uid"]),
            owner_gid=int(doc["owner_gid"]),
            **{k: Path(doc[k]) for k in ("config_file", "state_dir", "cache_dir", "runtime_dir",
                                        "root_runtime_dir", "units_dir")},
        )
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not a valid install record: {exc}", hint=fix) from exc


@dataclass(frozen=True)
class Target:
    """The daemon a CLI talks to: a layout, and the system install it belongs to (None: the caller's own)."""

    layout: Layout
    system: Install | None = None


def client_target(env: dict[str, str] | None = None) -> Target:
    """``BANGER_HOME`` first; then a system install (for its owner and root); then the caller's own layout.

    Another user of a machine with a system install is told whose it is, rather than given a daemon of
    their own that could not do anything needing root.
    """
    if paths.home_override(env):
        return Target(paths.layout_from_env(env))
    where = paths.install_file(env)
    inst = read_install(where)
    if inst is None:
        return Target(paths.layout_from_env(env))
    if os.geteuid() in (0, inst.owner_uid):
        return Target(inst.layout, inst)
    raise PermissionDenied(f"banger on this machine is {inst.owner}'s system install ({where}); "
                           f"uid {os.geteuid()} may not use it",
                           hint=f"ask {inst.owner}, or root can reinstall it for you: "
                                "`banger system install --owner YOU`")
