"""``banger vm ...`` and ``banger ps``."""

from __future__ import annotations

import click

from banger.cli import render
from banger.cli.context import Context, pass_ctx
from banger.model import VM

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def vm_rows(vms: list[VM]) -> list[list[object]]:
    return [
        [v.name, v.state, v.runtime or "-", v.ip or "-", v.spec.vcpu, f"{v.spec.memory_mib}M",
         render.size(v.spec.disk_size), v.spec.image, render.ago(v.created_at)]
        for v in vms
    ]


VM_COLUMNS = ["NAME", "STATE", "RUNTIME", "IP", "VCPU", "MEM", "DISK", "IMAGE", "CREATED"]


@click.group()
def vm() -> None:
    """Create, run and manage sandbox VMs."""


@vm.command("list")
@json_option
@pass_ctx
def vm_list(ctx: Context, as_json: bool) -> None:
    """List VMs."""
    vms = ctx.client.vm_list()
    if as_json:
        render.as_json(vms)
    else:
        render.table(VM_COLUMNS, vm_rows(vms), empty="no VMs yet; `banger vm run` makes one")


@click.command("ps")
@json_option
@click.pass_context
def ps(click_ctx: click.Context, as_json: bool) -> None:
    """List VMs (alias of `banger vm list`)."""
    click_ctx.invoke(vm_list, as_json=as_json)


@vm.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def vm_show(ctx: Context, ref: str, as_json: bool) -> None:
    """Show one VM."""
    v = ctx.client.vm_show(ref)
    if as_json:
        render.as_json(v)
        return
    render.fields([
        ("name", v.name), ("id", v.id), ("state", v.state + (f" ({v.reason})" if v.reason else "")),
        ("runtime", v.runtime or f"{v.spec.runtime} (not started)"), ("ip", v.ip), ("mac", v.mac),
        ("vcpu", v.spec.vcpu), ("memory", f"{v.spec.memory_mib} MiB"), ("disk", render.size(v.spec.disk_size)),
        ("image", v.spec.image), ("kernel", v.spec.kernel or "(image default)"), ("nat", v.spec.nat),
        ("dir", v.vm_dir), ("created", v.created_at.isoformat(timespec="seconds")),
        ("workspace", f"{v.workspace.guest_path} <- {v.workspace.host_path} @ {v.workspace.head_commit[:12]}"
         if v.workspace else "-"),
    ])
