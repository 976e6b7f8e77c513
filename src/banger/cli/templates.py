"""``banger vm templates list | build | prune``: the snapshot templates QEMU VMs are cloned from."""

from __future__ import annotations

import click

from banger.cli import render
from banger.cli.context import Context, pass_ctx
from banger.cli.vm import _create_options, json_option, vm


@vm.group("templates")
def templates() -> None:
    """Snapshot templates: one booted and saved guest per VM shape, which new VMs start from as clones."""


@templates.command("list")
@json_option
@pass_ctx
def templates_list(ctx: Context, as_json: bool) -> None:
    """Show every template, its size on disk and the VMs that stand on it."""
    found = ctx.client.vm_templates_list()
    if as_json:
        render.as_json(found)
        return
    render.table(
        ["ID", "IMAGE", "VCPU", "MEMORY", "DISK", "ON DISK", "BUILT IN", "VMS"],
        [[t.id, t.image or "?", t.vcpu or "?", f"{t.memory_mib}M" if t.memory_mib else "?", render.size(t.disk_size),
          render.size(t.allocated_bytes), f"{t.build_seconds:.1f}s" if t.build_seconds else "-", len(t.vms)]
         for t in found],
        empty="no snapshot templates (the first `banger vm run` or `vm templates build` makes one)",
    )


@templates.command("build")
@_create_options
@pass_ctx
def templates_build(ctx: Context, **opts: object) -> None:
    """Build the template a `vm create` with these options would clone (nothing to do when it exists)."""
    from banger.api import TemplateBuilt, VMCreate
    from banger.cli.progress import run

    opts.pop("cold", None)
    opts.pop("nat", None)
    opts.pop("name", None)
    req = VMCreate(**{k: v for k, v in opts.items() if v is not None})  # type: ignore[arg-type]
    op = run(ctx.client, lambda: ctx.client.vm_templates_build(req))
    if isinstance(op.result, TemplateBuilt):
        render.echo(f"template {op.result.template} ready")


@templates.command("prune")
@click.option("--all", "everything", is_flag=True, help="Remove every template no VM stands on, not only stale ones.")
@pass_ctx
def templates_prune(ctx: Context, everything: bool) -> None:
    """Remove templates that no VM stands on and that no new VM would use."""
    removed = ctx.client.vm_templates_prune(everything)
    for digest in removed:
        render.echo(f"{digest}: removed")
    if not removed:
        render.echo("nothing to remove", stderr=True)
