"""``banger vm run | ssh | exec | ports``: getting into guests with the system ssh and banger's key."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from banger import api
from banger.bounds import parse_size
from banger.cli import completion, render, workspace
from banger.cli.context import Context, pass_ctx
from banger.cli.vm import _create_options, create_vm, json_option, vm
from banger.errors import GuestError, InvalidArgument
from banger.script import fill


class DashDash(click.Command):
    """A command whose arguments after the first ``--`` are a guest command, kept verbatim."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["guest_command"] = tuple(args[cut + 1:])
            args = args[:cut]
        return super().parse_args(ctx, args)


def guest_command() -> tuple[str, ...]:
    return tuple(click.get_current_context().meta.get("guest_command", ()))


def ssh_into(info: api.VMConnectInfo, command: Sequence[str] | None, *, workdir: str | None = None) -> int:
    """Run the system ssh into the VM (interactive without ``command``); its exit status."""
    from banger.guest import ssh  # imports asyncssh: only commands that ssh pay for it

    remote = None
    if command:
        shell = ssh.shell_command(list(command))
        remote = [f"{fill('cd {} &&', workdir)} {shell}" if workdir else shell]
    argv = ssh.ssh_argv(info.ip, key_path=Path(info.key_path), known_hosts=Path(info.known_hosts),
                        command=remote, tty=command is None and sys.stdin.isatty())
    return subprocess.run(argv).returncode


def run_command(ctx: Context, ref: str, command: Sequence[str]) -> int:
    """Run ``command`` in the VM's workspace directory: through the guest agent, else over SSH."""
    from banger.cli.guest_exec import run_in_guest

    info = ctx.client.vm_connect(ref, wait_ssh=False)
    rc = run_in_guest(ctx.client, info.name, command, info.workdir)
    if rc is None:
        info = ctx.client.vm_connect(ref)  # now wait for sshd
        rc = ssh_into(info, command, workdir=info.workdir)
    return rc


def _spec_line(ctx: Context, opts: dict[str, object]) -> str:
    d = ctx.config.vm_defaults
    disk = parse_size(str(opts.get("disk_size") or d.disk_size))
    image = opts.get("image") or ctx.config.default_image_name
    return (f"spec: vcpu={opts.get('vcpu') or d.vcpu} memory={opts.get('memory_mib') or d.memory_mib}M "
            f"disk={render.size(disk)} image={image} runtime={opts.get('runtime') or ctx.config.runtime}")


@vm.command("run", cls=DashDash)
@click.argument("path", required=False)
@_create_options
@click.option("--rm", "remove", is_flag=True, help="Delete the VM when the session or command ends.")
@click.option("-d", "--detach", is_flag=True, help="Create and start the VM, then return.")
@pass_ctx
def vm_run(ctx: Context, path: str | None, remove: bool, detach: bool, **opts: object) -> None:
    """Create a VM and ssh into it, or run COMMAND there and exit with its status.

    \b
    banger vm run                       # bare sandbox, interactive ssh
    banger vm run -- uname -r           # run a command, exit with its status
    banger vm run --rm -- make test     # ... and delete the VM afterwards
    banger vm run ./repo -- make test   # repo copied to /root/repo, command run there
    """
    command = guest_command()
    ws_req = None
    if path is not None:  # a repo in a state prepare refuses fails here, before any VM exists
        ctx.client.vm_workspace_prepare(workspace.prepare_request(None, path, dry_run=True))
        ws_req = workspace.prepare_request(None, path)
    if detach and (remove or command):
        raise InvalidArgument("-d/--detach runs the VM in the background: it takes neither --rm nor a command")
    render.echo(_spec_line(ctx, opts), stderr=True)
    try:
        v, built = create_vm(ctx, opts, workspace=ws_req)
    except GuestError as exc:
        if remove:
            exc.hint = (exc.hint or "") + "; --rm kept the VM because SSH never came up"
        raise
    if built is not None:  # a clone: the daemon built the repo into it as a disk
        workspace.print_prepared(built)
    elif path is not None:
        _prepare_workspace(ctx, v.name, path, remove)
    if detach:
        render.echo(v.name)
        render.echo(f"VM {v.name} is running at {v.ip}: `banger vm ssh {v.name}`", stderr=True)
        return
    rc = 255
    try:
        if command:
            rc = run_command(ctx, v.name, command)
        else:
            info = ctx.client.vm_connect(v.name)
            rc = ssh_into(info, None, workdir=info.workdir) if not info.workdir else _shell_in(info)
    finally:
        if remove:
            _delete_uninterruptibly(ctx, v.name)
        elif not command:
            render.echo(f"VM {v.name} is still running: `banger vm stop {v.name}` stops it, "
                        f"`banger vm delete {v.name}` removes it", stderr=True)
    sys.exit(rc)


def _prepare_workspace(ctx: Context, name: str, path: str, remove: bool) -> None:
    """Ship the repo at ``path`` into the new VM; with --rm a failure deletes the VM again."""
    try:
        workspace.print_prepared(ctx.client.vm_workspace_prepare(workspace.prepare_request(name, path)))
    except BaseException:
        if remove:
            _delete_uninterruptibly(ctx, name)
        raise


def _shell_in(info: api.VMConnectInfo) -> int:
    """An interactive login shell in the VM's workspace directory."""
    from banger.guest import ssh

    remote = [fill("cd {} && exec bash -l", info.workdir or "/root")]
    argv = ssh.ssh_argv(info.ip, key_path=Path(info.key_path), known_hosts=Path(info.known_hosts),
                        command=remote, tty=sys.stdin.isatty())
    return subprocess.run(argv).returncode


def _delete_uninterruptibly(ctx: Context, name: str) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C must not leave half a VM behind
    try:
        outcome = ctx.client.vm_action(api.VM_DELETE, [name])[0]
        if not outcome.ok:
            render.echo(f"could not delete VM {name}: {outcome.error.message if outcome.error else '?'}",
                        stderr=True)
    finally:
        signal.signal(signal.SIGINT, previous)


@vm.command("ssh", cls=DashDash)
@click.argument("ref", shell_complete=completion.vms)
@pass_ctx
def vm_ssh(ctx: Context, ref: str) -> None:
    """Open a shell in a VM, or run the command after `--` there (exit status passes through)."""
    sys.exit(ssh_into(ctx.client.vm_connect(ref), guest_command() or None))


@vm.command("exec", cls=DashDash)
@click.argument("ref", shell_complete=completion.vms)
@pass_ctx
def vm_exec(ctx: Context, ref: str) -> None:
    """Run the command after `--` in a VM (in its workspace directory, if any); exit with its status."""
    command = guest_command()
    if not command:
        raise InvalidArgument("no command given", hint=f"banger vm exec {ref} -- CMD ...")
    sys.exit(run_command(ctx, ref, command))


@vm.command("ports")
@click.argument("refs", nargs=-1, required=True, shell_complete=completion.vms)
@json_option
@pass_ctx
def vm_ports(ctx: Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Listening TCP/UDP sockets in VMs, with the <name>.vm:port to reach each."""
    results = ctx.client.vm_ports(list(refs))
    if as_json:
        render.as_json(results)
    else:
        rows = [[r.ref, li.proto, f"{li.address}:{li.port}", li.process,
                 "(guest only)" if li.guest_only else li.endpoint] for r in results if r.ok for li in r.listeners]
        render.table(["VM", "PROTO", "LISTEN", "PROCESS", "ENDPOINT"], rows, empty="no listening sockets")
    failed = [r for r in results if not r.ok]
    for r in failed:
        render.echo(f"{r.ref}: error: {r.error.message if r.error else 'failed'}", stderr=True)
    if failed:
        sys.exit(1)
