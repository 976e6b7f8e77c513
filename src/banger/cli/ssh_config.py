"""``banger ssh-config [--install | --uninstall]``: `ssh NAME.vm` with banger's key, from any ssh client."""

from __future__ import annotations

from pathlib import Path

import click

from banger import sshconfig
from banger.cli import render
from banger.cli.context import Context, pass_ctx


@click.command("ssh-config")
@click.option("--install", "action", flag_value="install", help="Include banger's stanza from ~/.ssh/config.")
@click.option("--uninstall", "action", flag_value="uninstall", help="Remove that Include again.")
@pass_ctx
def ssh_config(ctx: Context, action: str | None) -> None:
    """Print (or install) a `Host *.vm` ssh stanza using banger's key and known_hosts."""
    key = Path(ctx.config.ssh_key_path).expanduser() if ctx.config.ssh_key_path else ctx.layout.ssh_dir / "id_ed25519"
    config_path = ctx.layout.ssh_dir / "config"
    home = Path.home()
    if action == "install":
        changed = sshconfig.install(home, config_path, key, ctx.layout.known_hosts)
        render.err.print(f"{'installed' if changed else 'already installed'}: ~/.ssh/config includes {config_path}",
                         markup=False)
    elif action == "uninstall":
        changed = sshconfig.uninstall(home)
        render.err.print("removed the Include from ~/.ssh/config" if changed else "nothing to remove", markup=False)
    else:
        click.echo(sshconfig.render_config(key, ctx.layout.known_hosts), nl=False)
