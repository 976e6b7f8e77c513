"""``bangerd`` entry point: load config, take the instance lock, serve until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import stat
import sys
from pathlib import Path

from banger import __version__, config, install, paths
from banger.daemon import logs
from banger.daemon.app import Daemon
from banger.daemon.server import FRAME_TIMEOUT
from banger.errors import BangerError, ConfigError, PermissionDenied
from banger.host.privileged import Privileged, RemotePrivileged


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bangerd", description="banger's daemon (started by the CLI on demand)")
    parser.add_argument("--version", action="version", version=f"bangerd {__version__}")
    # Tests use this to stand up an "old" daemon and watch the CLI replace it.
    parser.add_argument("--version-override", default=None, help=argparse.SUPPRESS)
    # Tests shorten how long a half-sent RPC frame may stay unfinished, to watch the connection dropped.
    parser.add_argument("--frame-timeout", type=float, default=FRAME_TIMEOUT, help=argparse.SUPPRESS)
    parser.add_argument("--install", type=Path, default=None,
                        help="serve the system install recorded in this install.toml (bangerd.service)")
    parser.add_argument("--check-migrations", action="store_true",
                        help="exit 0 if state.db is current, 1 if this version would migrate it, 2 if it is "
                             "newer than this version understands (before an upgrade or a restart)")
    return parser.parse_args(argv)


def check_migrations(layout: paths.Layout) -> int:
    """0 compatible, 1 migrations needed, 2 incompatible (written by a newer banger), read-only."""
    from banger.store import db

    if not layout.db.exists():
        print(f"bangerd: no state database at {layout.db} yet (it is created at the first start)")
        return 0
    conn = db.open_readonly(layout.db)
    try:
        have = db.schema_version(conn)
    finally:
        conn.close()
    if have > db.LATEST:
        print(f"bangerd: {layout.db} has schema {have}, newer than this version's {db.LATEST}: incompatible")
        return 2
    if have < db.LATEST:
        print(f"bangerd: {layout.db} has schema {have}; starting this version migrates it to {db.LATEST}")
        return 1
    print(f"bangerd: {layout.db} has schema {have}, current")
    return 0


async def _serve(cfg: config.Config, layout: paths.Layout, version: str, frame_timeout: float,
                 priv: Privileged | None) -> None:
    daemon = await Daemon.open(cfg, layout, priv=priv, version=version, frame_timeout=frame_timeout)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    try:
        await daemon.serve_forever()
    finally:
        await daemon.close()


def _system(where: Path) -> tuple[paths.Layout, Privileged]:
    """The owner daemon of a system install: its layout, and bangerd-root for everything that needs root."""
    inst = install.read_install(where)
    if inst is None:
        raise ConfigError(f"no install record at {where}", hint="run `banger system install --owner USER` as root")
    if os.geteuid() != inst.owner_uid:
        raise PermissionDenied(f"this install's bangerd runs as {inst.owner} (uid {inst.owner_uid}), "
                               f"not uid {os.geteuid()}", hint="start it through bangerd.service")
    if not inst.runtime_dir.is_dir():
        try:
            inst.runtime_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise PermissionDenied(f"cannot make {inst.runtime_dir}: {exc.strerror}",
                                   hint="start bangerd-root first: it makes the owner's runtime directory") from exc
    return inst.layout, RemotePrivileged(inst.root_socket)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    priv: Privileged | None = None
    try:
        if args.check_migrations:  # read-only: root or the owner may ask, before a restart or upgrade
            inst = install.read_install(args.install) if args.install else None
            return check_migrations(inst.layout if inst else paths.layout_from_env())
        if args.install is not None:
            layout, priv = _system(args.install)
        else:
            layout = paths.layout_from_env()
        cfg = config.load(layout.config_file)
        layout.ensure()
    except BangerError as exc:
        print(f"bangerd: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        lock = _open_own(layout.runtime_dir / "bangerd.lock")  # held (and locked) for the process lifetime
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(_open_own(layout.pid_file))  # only checked and created here: Daemon.open writes it once serving
    except BlockingIOError:
        print(f"bangerd: another bangerd already serves {layout.socket}", file=sys.stderr)
        return 1
    except PermissionDenied as exc:
        print(f"bangerd: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"bangerd: cannot open {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    logs.setup(layout.daemon_log, cfg.log_level)
    try:
        asyncio.run(_serve(cfg, layout, args.version_override or __version__, args.frame_timeout, priv))
    except BangerError as exc:
        print(f"bangerd: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _open_own(path: Path) -> int:
    """Open (creating) the regular file ``path`` without following a symlink planted there.

    Neither truncated nor written here: a refused path stays exactly as it was found.
    """
    hint = f"something other than bangerd put it there: `rm {path}` (after a look at it), then start again"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise PermissionDenied(f"{path} is a symlink; bangerd refuses to follow it", hint=hint) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PermissionDenied(f"{path} is not a regular file; bangerd refuses to use it", hint=hint)
    return fd


if __name__ == "__main__":
    sys.exit(main())
