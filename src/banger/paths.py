"""Where banger keeps things on disk; with ``config``, the only module that reads the environment.

``BANGER_HOME=DIR`` puts everything under one directory (tests use it)::

    DIR/config.toml  DIR/state/  DIR/cache/  DIR/run/

Otherwise root uses ``/etc/banger``, ``/var/lib/banger``, ``/var/cache/banger``, ``/run/banger``, and other
users the XDG directories (``~/.config/banger``, ``~/.local/state/banger``, ``~/.cache/banger``,
``$XDG_RUNTIME_DIR/banger``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Every directory and well-known file banger uses."""

    config_file: Path
    state_dir: Path
    cache_dir: Path
    runtime_dir: Path

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "bangerd.sock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "bangerd.pid"

    @property
    def db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "bangerd.log"

    @property
    def daemon_stdio_log(self) -> Path:
        return self.state_dir / "bangerd.stdio.log"

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    @property
    def templates_dir(self) -> Path:
        return self.state_dir / "templates"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def kernels_dir(self) -> Path:
        return self.state_dir / "kernels"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    def vm_dir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id

    def ensure(self) -> None:
        """Create the directories with private modes (runtime dir 0700, as the socket lives there)."""
        for d in (self.state_dir, self.cache_dir, self.vms_dir, self.images_dir, self.kernels_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.runtime_dir, 0o700)


def layout_from_env(env: dict[str, str] | None = None) -> Layout:
    """The layout for the current user and environment."""
    env = dict(os.environ if env is None else env)
    home = env.get("BANGER_HOME")
    if home:
        base = Path(home).expanduser().resolve()
        return Layout(base / "config.toml", base / "state", base / "cache", base / "run")
    if os.geteuid() == 0:
        return Layout(
            Path("/etc/banger/config.toml"),
            Path("/var/lib/banger"),
            Path("/var/cache/banger"),
            Path("/run/banger"),
        )
    user_home = Path(env.get("HOME") or Path.home())
    xdg_config = Path(env.get("XDG_CONFIG_HOME") or user_home / ".config")
    xdg_state = Path(env.get("XDG_STATE_HOME") or user_home / ".local/state")
    xdg_cache = Path(env.get("XDG_CACHE_HOME") or user_home / ".cache")
    runtime = env.get("XDG_RUNTIME_DIR")
    runtime_dir = Path(runtime) / "banger" if runtime else Path(f"/tmp/banger-{os.geteuid()}")
    return Layout(xdg_config / "banger/config.toml", xdg_state / "banger", xdg_cache / "banger", runtime_dir)


def tool_log() -> Path | None:
    """``$BANGER_TOOL_LOG``: where test runs record every host program banger resolves (None normally)."""
    value = os.environ.get("BANGER_TOOL_LOG")
    return Path(value) if value else None


def home_override(env: dict[str, str] | None = None) -> bool:
    """Whether ``BANGER_HOME`` chooses the layout (it wins over a system install)."""
    return bool((os.environ if env is None else env).get("BANGER_HOME"))


def install_file(env: dict[str, str] | None = None) -> Path:
    """Where ``banger system install`` records the install: ``$BANGER_INSTALL`` (tests) or the system path."""
    env = dict(os.environ if env is None else env)
    return Path(env.get("BANGER_INSTALL") or "/etc/banger/install.toml")
