"""``banger kernel ...``."""

from __future__ import annotations

import click

from banger.cli import render
from banger.cli.context import Context, pass_ctx

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def kernel() -> None:
    """Pull, import and manage guest kernels."""


@kernel.command("list")
@click.option("--available", is_flag=True, help="Also list catalog kernels that can be pulled.")
@json_option
@pass_ctx
def kernel_list(ctx: Context, available: bool, as_json: bool) -> None:
    """List local kernels."""
    result = ctx.client.kernel_list(available)
    if as_json:
        render.as_json(result if available else result.kernels)
        return
    rows = [[k.name, k.version, k.source, "local", render.ago(k.created_at)] for k in result.kernels]
    local = {k.name for k in result.kernels}
    rows += [[e["name"], e.get("kernel_version", ""), "catalog", "available", ""]
             for e in result.available if e["name"] not in local]
    render.table(["NAME", "VERSION", "SOURCE", "STATUS", "CREATED"], rows,
                 empty="no kernels yet; `banger kernel pull debian-6.1` builds the default one")


@kernel.command("show")
@click.argument("name")
@json_option
@pass_ctx
def kernel_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show one kernel and its manifest."""
    k = ctx.client.kernel_show(name)
    if as_json:
        render.as_json(k)
        return
    render.fields([("name", k.name), ("version", k.version), ("source", k.source), ("dir", k.dir),
                   ("created", k.created_at.isoformat(timespec="seconds"))])
