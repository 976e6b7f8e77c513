"""``bangerd`` entry point: load config, take the instance lock, serve until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import signal
import sys

from banger import __version__, config, paths
from banger.daemon import logs
from banger.daemon.app import Daemon
from banger.errors import BangerError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bangerd", description="banger's daemon (started by the CLI on demand)")
    parser.add_argument("--version", action="version", version=f"bangerd {__version__}")
    # Tests use this to stand up an "old" daemon and watch the CLI replace it.
    parser.add_argument("--version-override", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def _serve(cfg: config.Config, layout: paths.Layout, version: str) -> None:
    daemon = await Daemon.open(cfg, layout, version=version)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    try:
        await daemon.serve_forever()
    finally:
        await daemon.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    layout = paths.layout_from_env()
    try:
        cfg = config.load(layout.config_file)
    except BangerError as exc:
        print(f"bangerd: {exc}", file=sys.stderr)
        return exc.exit_code
    layout.ensure()
    lock = open(layout.runtime_dir / "bangerd.lock", "w")  # noqa: SIM115  (held for the process lifetime)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"bangerd: another bangerd already serves {layout.socket}", file=sys.stderr)
        return 1
    logs.setup(layout.daemon_log, cfg.log_level)
    try:
        asyncio.run(_serve(cfg, layout, args.version_override or __version__))
    except BangerError as exc:
        print(f"bangerd: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
