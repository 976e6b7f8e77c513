"""``banger daemon status|stop|logs|operations``."""

from __future__ import annotations

import sys
import time

import click

from banger.cli import params, render
from banger.cli.context import Context, pass_ctx
from banger.client import Client
from banger.errors import DaemonUnavailable


@click.group()
def daemon() -> None:
    """Inspect and control bangerd (started automatically on first use)."""


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Show the running daemon (starting it if needed)."""
    s = ctx.client.status()
    if as_json:
        render.as_json(s)
        return
    vms = ", ".join(f"{n} {state}" for state, n in sorted(s.vms.items())) or "none"
    render.fields([("version", s.version), ("pid", s.pid), ("up since", render.ago(s.started_at)),
                   ("socket", s.socket), ("state", s.state_dir), ("schema", s.schema_version), ("vms", vms),
                   ("images", s.images), ("kernels", s.kernels), ("operations", s.operations_running),
                   ("dns", s.dns)])


@daemon.command("stop")
@pass_ctx
def stop(ctx: Context) -> None:
    """Stop bangerd (running VMs keep running and are re-adopted at the next start)."""
    try:
        system = ctx.target.system
        client = Client.connect(ctx.layout, autostart=False, daemon_uid=system.owner_uid if system else None)
    except DaemonUnavailable:
        render.err.print("bangerd is not running")
        return
    with client:
        pid = client.ping().pid
        client.shutdown()
    Client.wait_gone(ctx.layout, pid)
    render.err.print(f"bangerd (pid {pid}) stopped")


@daemon.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=params.LOG_LINES, default=50, show_default=True,
              help="Lines to show from the end (0: only new ones, with -f).")
@pass_ctx
def logs(ctx: Context, follow: bool, lines: int) -> None:
    """Print the daemon's JSON log."""
    path = ctx.layout.daemon_log
    if not path.exists():
        render.echo(f"no daemon log yet at {path}", stderr=True)
        return
    with open(path, errors="replace") as f:
        tail = f.readlines()
        for line in tail[max(0, len(tail) - lines):]:  # not [-lines:]: [-0:] is every line
            sys.stdout.write(render.clean(line, keep="\n\t"))  # the daemon writes escaped JSON; check anyway
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(render.clean(line, keep="\n\t"))
                sys.stdout.flush()
            else:
                time.sleep(0.2)


@daemon.command("operations")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def operations(ctx: Context, as_json: bool) -> None:
    """List recent long-running operations."""
    ops = ctx.client.operations()
    if as_json:
        render.as_json(ops)
        return
    rows = [[o.id, o.kind, o.target, o.state, o.stage, render.ago(o.started_at)] for o in ops]
    render.table(["ID", "KIND", "TARGET", "STATE", "STAGE", "STARTED"], rows, empty="no operations")
