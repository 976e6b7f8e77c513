"""``banger vm ...`` and ``banger ps``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from banger import api
from banger.cli import completion, params, render
from banger.cli.context import Context, pass_ctx
from banger.cli.lazy import LazyGroup
from banger.errors import ProtocolError

if TYPE_CHECKING:
    from banger.model import VM
    from banger.wire import WorkspacePrepare, WorkspacePrepareResult

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def vm_rows(vms: list[VM]) -> list[list[object]]:
    return [
        [v.name, v.state, v.runtime or "-", v.ip or "-", v.spec.vcpu, f"{v.spec.memory_mib}M",
         render.size(v.spec.disk_size), v.spec.image, render.ago(v.created_at)]
        for v in vms
    ]


VM_COLUMNS = ["NAME", "STATE", "RUNTIME", "IP", "VCPU", "MEM", "DISK", "IMAGE", "CREATED"]


@click.group(cls=LazyGroup, lazy={
    "run": "banger.cli.vm_run:vm_run", "ssh": "banger.cli.vm_run:vm_ssh", "exec": "banger.cli.vm_run:vm_exec",
    "ports": "banger.cli.vm_run:vm_ports", "workspace": "banger.cli.workspace:workspace",
    "templates": "banger.cli.templates:templates",
})
def vm() -> None:
    """Create, run and manage sandbox VMs."""


@vm.command("list")
@json_option
@pass_ctx
def vm_list(ctx: Context, as_json: bool) -> None:
    """List VMs."""
    if as_json:  # the daemon's JSON as it came: no models to build, so no pydantic to import
        render.as_json(ctx.client.call_raw(api.VM_LIST)["vms"])
    else:
        render.table(VM_COLUMNS, vm_rows(ctx.client.vm_list()), empty="no VMs yet; `banger vm run` makes one")


@click.command("ps")
@json_option
@click.pass_context
def ps(click_ctx: click.Context, as_json: bool) -> None:
    """List VMs (alias of `banger vm list`)."""
    click_ctx.invoke(vm_list, as_json=as_json)


@vm.command("show")
@click.argument("ref", shell_complete=completion.vms)
@json_option
@pass_ctx
def vm_show(ctx: Context, ref: str, as_json: bool) -> None:
    """Show one VM."""
    if as_json:  # the daemon's JSON as it came (no pydantic)
        render.as_json(ctx.client.call_raw(api.VM_SHOW, {"ref": ref}))
        return
    v = ctx.client.vm_show(ref)
    render.fields([
        ("name", v.name), ("id", v.id), ("state", v.state + (f" ({v.reason})" if v.reason else "")),
        ("runtime", v.runtime or f"{v.spec.runtime} (not started)"), ("ip", v.ip), ("mac", v.mac),
        ("vcpu", v.spec.vcpu), ("memory", f"{v.spec.memory_mib} MiB"), ("disk", render.size(v.spec.disk_size)),
        ("image", v.spec.image), ("kernel", v.spec.kernel or "(image default)"), ("nat", v.spec.nat),
        ("dir", v.vm_dir), ("created", v.created_at.isoformat(timespec="seconds")),
        ("workspace", f"{v.workspace.guest_path} <- {v.workspace.host_path} @ {v.workspace.head_commit[:12]}"
         if v.workspace else "-"),
    ])


def _create_options(f):  # type: ignore[no-untyped-def]
    for opt in reversed([
        click.option("--name", type=params.VM_NAME, help="VM name (generated when omitted)."),
        click.option("--image", type=params.IMAGE_NAME, help="Image to boot (default: the default image)."),
        click.option("--kernel", type=params.KERNEL_NAME, help="Kernel (default: the image's kernel)."),
        click.option("--runtime", type=params.RUNTIME, help="VMM to use."),
        click.option("--vcpu", type=params.VCPU, help="Virtual CPUs."),
        click.option("--memory", "memory_mib", type=params.MEMORY_MIB, help="Memory in MiB."),
        click.option("--disk-size", type=params.DISK_SIZE, help="Work disk size, e.g. 16G."),
        click.option("--nat", is_flag=True, help="Give the VM outbound network access through the host."),
        click.option("--cold", is_flag=True, default=None,
                     help="Boot from the image instead of cloning a snapshot template."),
    ]):
        f = opt(f)
    return f


def create_vm(ctx: Context, opts: dict[str, object], *, start: bool = True, quiet: bool = False,
              workspace: WorkspacePrepare | None = None) -> tuple[VM, WorkspacePrepareResult | None]:
    """Start a vm.create operation, follow it, and return the VM (shared with `vm run`) and, when the
    daemon built ``workspace`` into it as a disk, what it prepared."""
    from banger.cli.progress import run
    from banger.wire import VMCreate, VMCreated

    req = VMCreate(start=start, workspace=workspace,
                   **{k: v for k, v in opts.items() if v is not None})  # type: ignore[arg-type]
    op = run(ctx.client, lambda: ctx.client.vm_create(req), quiet=quiet)
    for line in op.notes:  # the VMM chosen and why, a clone or why not
        render.echo(line, stderr=True)
    if not isinstance(op.result, VMCreated):
        raise ProtocolError(f"vm.create ended without the VM it made: {op.result!r}")
    return op.result.vm, op.result.workspace


@vm.command("create")
@_create_options
@click.option("--no-start", is_flag=True, help="Create the VM stopped.")
@json_option
@pass_ctx
def vm_create(ctx: Context, no_start: bool, as_json: bool, **opts: object) -> None:
    """Create a VM (and start it, unless --no-start)."""
    v, _ = create_vm(ctx, opts, start=not no_start)
    if as_json:
        render.as_json(v)
    else:
        render.echo(f"{v.name} {v.state} {v.ip} ({v.runtime})")


DONE = {"start": "started", "stop": "stopped", "restart": "restarted", "kill": "killed", "delete": "deleted"}


def _fan_out(ctx: Context, action: str, refs: tuple[str, ...], as_json: bool) -> None:
    results = ctx.client.vm_action(ACTIONS[action], list(refs))
    if as_json:
        render.as_json(results)
    failed = 0
    for r in results:
        if r.ok:
            if not as_json:
                render.echo(f"{r.ref}: {DONE[action]}")  # what was done, not the state it was done from
        else:
            failed += 1
            render.echo(f"{r.ref}: error: {r.error.message if r.error else 'failed'}", stderr=True)
            if r.error and r.error.data.hint:
                render.echo(f"  hint: {r.error.data.hint}", stderr=True)
    if failed:
        raise SystemExit(1)


def _action(name: str, help_text: str) -> None:
    @vm.command(name, help=help_text)
    @click.argument("refs", nargs=-1, required=True, shell_complete=completion.vms)
    @json_option
    @pass_ctx
    def command(ctx: Context, refs: tuple[str, ...], as_json: bool) -> None:
        _fan_out(ctx, name, refs, as_json)


ACTIONS = {"start": api.VM_START, "stop": api.VM_STOP, "restart": api.VM_RESTART, "kill": api.VM_KILL,
           "delete": api.VM_DELETE}
for _name, _help in (("start", "Start stopped VMs."), ("stop", "Stop VMs gracefully (then kill after a grace)."),
                     ("restart", "Restart VMs."), ("kill", "Kill VMs' VMM processes at once."),
                     ("delete", "Delete VMs and everything they hold.")):
    _action(_name, _help)
vm.add_command(vm.commands["delete"], "rm")


@vm.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def vm_prune(ctx: Context, force: bool) -> None:
    """Delete every VM that is not running."""
    victims = [v.name for v in ctx.client.vm_list() if v.state != "running"]
    if not victims:
        render.err.print("nothing to prune")
        return
    if not force:
        click.confirm(render.clean(f"delete {len(victims)} VM(s): {', '.join(victims)}?"), abort=True, err=True)
    for v in ctx.client.vm_prune():
        render.echo(f"deleted {v.name}")


@vm.command("set")
@click.argument("ref", shell_complete=completion.vms)
@click.option("--vcpu", type=params.VCPU, help="Virtual CPUs (applies at next start).")
@click.option("--memory", "memory_mib", type=params.MEMORY_MIB,
              help="Memory in MiB (applies at next start).")
@click.option("--disk-size", type=params.DISK_SIZE, help="Grow the work disk (VM must be stopped).")
@click.option("--nat/--no-nat", default=None, help="Outbound NAT (applies at once when running).")
@json_option
@pass_ctx
def vm_set(ctx: Context, ref: str, as_json: bool, **opts: object) -> None:
    """Change a VM's resources."""
    v = ctx.client.vm_set(api.VMSet(ref=ref, **{k: val for k, val in opts.items() if val is not None}))  # type: ignore[arg-type]
    if as_json:
        render.as_json(v)
    else:
        render.echo(f"{v.name}: vcpu={v.spec.vcpu} memory={v.spec.memory_mib}M "
                    f"disk={render.size(v.spec.disk_size)} nat={v.spec.nat}")


@vm.command("logs")
@click.argument("ref", shell_complete=completion.vms)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new console output.")
@click.option("--raw", is_flag=True, help="Print escape sequences and control characters as the guest wrote them.")
@pass_ctx
def vm_logs(ctx: Context, ref: str, follow: bool, raw: bool) -> None:
    """Print a VM's serial console (terminal escape sequences removed unless --raw)."""
    import sys
    import time

    offset, held = 0, ""
    while True:
        chunk = ctx.client.vm_logs(ref, offset)
        offset = chunk.offset
        if raw:
            sys.stdout.write(chunk.data)
        else:
            text, held = render.split_unfinished(held + chunk.data)  # a sequence cut by the chunk ends later
            sys.stdout.write(render.clean(text, keep="\n\t"))
        sys.stdout.flush()
        if not follow:
            if held:
                sys.stdout.write(render.clean(held, keep="\n\t"))
            return
        if not chunk.data:
            time.sleep(0.5)


@vm.command("stats")
@click.argument("refs", nargs=-1, required=True, shell_complete=completion.vms)
@json_option
@pass_ctx
def vm_stats(ctx: Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Resource use of VMs (VMM CPU and memory, disk allocation)."""
    stats = [ctx.client.vm_stats(r) for r in refs]
    if as_json:
        render.as_json(stats)
        return
    rows = [[s.ref, s.state, s.pid or "-", f"{s.cpu_seconds or 0:.1f}s", render.size(s.rss_bytes),
             render.size(sum(d.allocated for d in s.disks.values()))] for s in stats]
    render.table(["NAME", "STATE", "PID", "CPU", "RSS", "DISK USED"], rows)
