"""``banger kernel ...``: list, show, pull, import and remove guest kernels."""

from __future__ import annotations

import os

import click

from banger import api
from banger.cli import completion, params, render
from banger.cli.context import Context, pass_ctx
from banger.cli.progress import run

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
existing_file = params.EXISTING_FILE


@click.group()
def kernel() -> None:
    """Pull, import and manage guest kernels."""


@kernel.command("list")
@click.option("--available", is_flag=True, help="Also list catalog kernels that can be pulled.")
@json_option
@pass_ctx
def kernel_list(ctx: Context, available: bool, as_json: bool) -> None:
    """List local kernels."""
    if as_json:  # the daemon's JSON as it came (no pydantic)
        raw = ctx.client.call_raw(api.KERNEL_LIST, {"available": available})
        render.as_json(raw if available else raw["kernels"])
        return
    result = ctx.client.kernel_list(available)
    rows = [[k.name, k.version, k.source, "local", render.ago(k.created_at)] for k in result.kernels]
    local = {k.name for k in result.kernels}
    rows += [[e.name, e.kernel_version, "catalog", "available", ""] for e in result.available if e.name not in local]
    render.table(["NAME", "VERSION", "SOURCE", "STATUS", "CREATED"], rows,
                 empty="no kernels yet; `banger kernel pull debian-6.1` builds the default one")


@kernel.command("show")
@click.argument("name", shell_complete=completion.kernels)
@json_option
@pass_ctx
def kernel_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show one kernel and its manifest."""
    k = ctx.client.kernel_show(name)
    if as_json:
        render.as_json(k)
        return
    render.fields([("name", k.name), ("version", k.version), ("source", k.source), ("dir", k.dir),
                   ("files", ", ".join(k.files)),
                   ("created", k.created_at.isoformat(timespec="seconds"))])


@kernel.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace the kernel if it is already installed.")
@pass_ctx
def kernel_pull(ctx: Context, name: str, force: bool) -> None:
    """Fetch (or build) catalog kernel NAME; Ctrl-C cancels and leaves nothing behind."""
    op = run(ctx.client, lambda: ctx.client.kernel_pull(name, force=force))
    version = op.result.kernel.version if isinstance(op.result, api.KernelInstalled) else ""
    render.echo(f"kernel {name} {version} installed".replace("  ", " "), stderr=True)


@kernel.command("import")
@click.argument("name")
@click.option("--vmlinux", required=True, type=existing_file, help="Uncompressed x86-64 ELF kernel.")
@click.option("--initrd", type=existing_file, help="Initramfs to boot with it.")
@pass_ctx
def kernel_import(ctx: Context, name: str, vmlinux: str, initrd: str | None) -> None:
    """Install a local vmlinux (and initrd) as kernel NAME."""
    k = ctx.client.kernel_import(name, os.path.abspath(vmlinux), os.path.abspath(initrd) if initrd else None)
    render.echo(f"kernel {k.name} imported into {k.dir}", stderr=True)


@kernel.command("rm")
@click.argument("name", shell_complete=completion.kernels)
@pass_ctx
def kernel_rm(ctx: Context, name: str) -> None:
    """Remove kernel NAME (refused while a VM boots it)."""
    ctx.client.kernel_rm(name)
    render.echo(f"kernel {name} removed", stderr=True)
