"""``banger system install | status | restart | uninstall``: the two-service install (see banger.sysinstall)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from banger import paths, sysinstall
from banger.cli import render
from banger.cli.context import Context, pass_ctx
from banger.errors import Conflict, HostError, NotFound


@click.group()
def system() -> None:
    """Install banger as two services: bangerd (as its owner) and bangerd-root (root, checked operations)."""


@system.command("install")
@click.option("--owner", required=True, help="The user bangerd runs as and who may use it.")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="Install under this directory instead of / (for packaging and tests).")
def install_cmd(owner: str, prefix: Path) -> None:
    """Write install.toml, the two units and the state layout; start the services under systemd."""
    done = sysinstall.do_install(owner, prefix)
    inst = done.inst
    render.echo(f"installed banger for {inst.owner} (uid {inst.owner_uid}): {sysinstall.install_path(inst)}")
    for path in done.units.values():
        render.echo(f"  wrote {path}")
    from banger.host import userns

    try:  # image builds and registry pulls keep file owners through the owner's subordinate ids
        userns.id_map_for(inst.owner_uid)
    except HostError as exc:
        render.echo(f"note: {exc}; as root: {exc.hint.removeprefix('as root: ') if exc.hint else ''}")
    if done.started:
        render.echo(f"started {sysinstall.ROOT_UNIT} and {sysinstall.OWNER_UNIT}")
    else:
        why = "systemd is not running here" if not sysinstall.systemd_running() else "a --prefix install"
        render.echo(f"not started ({why}); start them as the units say:")
        render.echo(f"  as root:          {shlex.join(sysinstall.exec_start('banger.rootd', inst))}")
        render.echo(f"  as {inst.owner}: {shlex.join(sysinstall.exec_start('banger.daemon', inst))}")


@system.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(as_json: bool) -> None:
    """The install, its services, and any drift from what this banger would write."""
    st = sysinstall.status(paths.install_file())
    if as_json:
        render.as_json({"install": str(st.record), "installed": st.inst is not None,
                        "owner": st.inst.owner if st.inst else None, "drift": st.drift,
                        "bangerd_root": st.helper_up, "bangerd": st.daemon_up})
        return
    if st.inst is None:
        render.echo(f"no system install ({st.record}); as root: banger system install --owner USER")
        return
    up = {True: "answering", False: "not answering"}
    render.fields([("install", str(st.record)), ("owner", f"{st.inst.owner} (uid {st.inst.owner_uid})"),
                   ("version", st.inst.version), ("bangerd-root", f"{up[st.helper_up]} on {st.inst.root_socket}"),
                   ("bangerd", f"{up[st.daemon_up]} on {st.inst.layout.socket}"),
                   ("drift", "; ".join(st.drift) or "none")])


@system.command("restart")
@click.option("--force", is_flag=True, help="Restart even while operations are running (they fail).")
@pass_ctx
def restart_cmd(ctx: Context, force: bool) -> None:
    """Restart both services (VMs keep running and are re-adopted); refused while operations run."""
    if ctx.target.system is None:
        raise NotFound("no system install to restart", hint="as root: banger system install --owner USER")
    running = [op for op in ctx.client.operations() if op.state == "running"]
    if running and not force:
        raise Conflict(f"{len(running)} operation(s) are running ({', '.join(op.id for op in running)})",
                       hint="wait for them (`banger daemon status`), or pass --force")
    if not sysinstall.systemd_running():
        render.echo("systemd is not running here: stop both daemons and start them again as the units say")
        sys.exit(1)
    from banger.host.run import run_sync

    run_sync(["systemctl", "restart", sysinstall.ROOT_UNIT, sysinstall.OWNER_UNIT])
    render.echo("restarted bangerd-root and bangerd")


@system.command("uninstall")
@click.option("--purge", is_flag=True, help="Also delete VMs, images, kernels and caches.")
def uninstall_cmd(purge: bool) -> None:
    """Remove the units and install.toml; VM data stays unless --purge."""
    for path in sysinstall.do_uninstall(paths.install_file(), purge=purge):
        render.echo(f"removed {path}")
