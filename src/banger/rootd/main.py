"""``bangerd-root`` entry point: the unit's ``ExecStart=`` line runs ``python -m banger.rootd --install PATH``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

from banger import __version__, config, install, paths
from banger.daemon import logs
from banger.errors import BangerError, ConfigError, PermissionDenied
from banger.rootd.policy import Policy
from banger.rootd.server import RootHelper, Server


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bangerd-root", description="banger's root helper (system install)")
    parser.add_argument("--version", action="version", version=f"bangerd-root {__version__}")
    parser.add_argument("--install", type=Path, default=None, help="install.toml (default /etc/banger/install.toml)")
    return parser.parse_args(argv)


def _trusted_config(path: Path) -> config.Config:
    """The config the policy comes from: root's file, or the defaults when there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return config.Config()
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise PermissionDenied(f"{path} decides what bangerd-root allows, so it must be root's and writable "
                               "only by root", hint=f"`chown root: {path} && chmod 644 {path}`")
    return config.load(path)


def _owner_runtime_dir(inst: install.Install) -> None:
    """Make the owner daemon's runtime dir (its parent, e.g. /run, is root's): the owner's, 0700."""
    path = inst.runtime_dir
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chown(path, inst.owner_uid, inst.owner_gid)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != inst.owner_uid:
        raise PermissionDenied(f"{path} should be a directory of {inst.owner}'s",
                               hint=f"remove it (`rm -rf {path}`) and start bangerd-root again")


TUN = Path("/dev/net/tun")


def _tun_usable() -> None:
    """The owner's VMMs open their TAPs through /dev/net/tun. Debian's udev makes it 0666 (a persistent TAP
    still opens only for the user it was created for); hosts without udev leave it 0600, so match Debian."""
    try:
        mode = stat.S_IMODE(os.stat(TUN).st_mode)
    except FileNotFoundError:
        return  # doctor says what to load (modprobe tun)
    if mode != 0o666:
        os.chmod(TUN, 0o666)


async def _serve(server: Server) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.serve(stopping)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if os.geteuid() != 0:
            raise PermissionDenied("bangerd-root must run as root", hint="it is started by bangerd-root.service")
        where = args.install or paths.install_file()
        inst = install.read_install(where)
        if inst is None:
            raise ConfigError(f"no install record at {where}", hint="run `banger system install --owner USER`")
        cfg = _trusted_config(inst.config_file)
        policy = Policy.from_config(cfg, inst.owner_uid, inst.state_dir, inst.owner_gid)
        os.umask(0o022)
        _owner_runtime_dir(inst)
        _tun_usable()
        logs.setup(inst.root_runtime_dir / "bangerd-root.log", cfg.log_level)
        server = Server(inst.root_socket, RootHelper(policy), inst.owner_uid)
        server.start()
    except BangerError as exc:
        print(f"bangerd-root: {exc}", file=sys.stderr)
        return exc.exit_code
    asyncio.run(_serve(server))
    return 0
