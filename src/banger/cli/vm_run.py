"""``banger vm run | ssh | exec | ports``: getting into guests with the system ssh and banger's key."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from banger import api
from banger.bounds import parse_size
from banger.cli import completion, params, render, workspace
from banger.cli.context import Context, pass_ctx
from banger.cli.vm import _create_options, create_vm, json_option, vm
from banger.errors import Conflict, GuestError, InvalidArgument
from banger.script import fill, shell_command
from banger.workspace import plan

if TYPE_CHECKING:
    from banger.model import VM


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


def run_command(ctx: Context, ref: str, shell: str, *, workdir: str | None = None) -> int:
    """Run the shell string ``shell`` in ``workdir`` (default: the VM's workspace directory, else /root):
    through the guest agent, else over SSH."""
    from banger.cli.guest_exec import run_in_guest

    info = ctx.client.vm_connect(ref, wait_ssh=False)
    workdir = workdir or info.workdir
    rc = run_in_guest(ctx.client, info.name, [shell], workdir)
    if rc is None:
        info = ctx.client.vm_connect(ref)  # now wait for sshd
        rc = ssh_into(info, [shell], workdir=workdir)
    return rc


def run_with_tools(ctx: Context, v: VM, command: Sequence[str], *, workdir: str | None = None) -> int:
    """The CLI's ``-- CMD`` in VM ``v``, through ``mise exec`` when the guest has mise (the repo's tools on
    PATH; missing ones installed only when the VM has NAT)."""
    return run_command(ctx, v.name, plan.tools_command(shell_command(list(command)), install=v.spec.nat),
                       workdir=workdir)


def _spec_line(ctx: Context, opts: dict[str, object]) -> str:
    d = ctx.config.vm_defaults
    disk = parse_size(str(opts.get("disk_size") or d.disk_size))
    image = opts.get("image") or ctx.config.default_image_name
    return (f"spec: vcpu={opts.get('vcpu') or d.vcpu} memory={opts.get('memory_mib') or d.memory_mib}M "
            f"disk={render.size(disk)} image={image} runtime={opts.get('runtime') or ctx.config.runtime}")


@vm.command("run", cls=DashDash)
@click.argument("path", required=False)
@_create_options
@workspace.repo_options
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
    banger vm run ./repo --dry-run      # what would be copied; no VM is made
    """
    command = guest_command()
    repo = {name: opts.pop(name) for name in workspace.REPO_OPTIONS}
    _check_run_options(path, repo, detach=detach, remove=remove, command=command)
    ws_req = None
    if path is not None:  # a repo in a state prepare refuses fails here, before any VM exists
        dry = _dry_run(ctx, path, repo, nat=bool(opts.get("nat")))
        if repo["dry_run"]:
            workspace.print_dry_run(dry)
            return
        ws_req = workspace.prepare_request(None, path, **repo)
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
        _prepare_workspace(ctx, v.name, path, repo, remove)
    if detach:
        render.echo(v.name)
        render.echo(f"VM {v.name} is running at {v.ip}: `banger vm ssh {v.name}`", stderr=True)
        return
    rc = 255
    try:
        if command and path is None:  # no repository, no mise config to apply: skip mise's start (~0.2 s)
            rc = run_command(ctx, v.name, shell_command(list(command)))
        elif command:
            rc = run_with_tools(ctx, v, command)
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


def _check_run_options(path: str | None, repo: dict[str, object], *, detach: bool, remove: bool,
                       command: tuple[str, ...]) -> None:
    """Usage errors of `vm run`, before anything is asked of the daemon."""
    given = [name for name in workspace.REPO_OPTIONS if repo[name]]
    if path is None and given:
        flag = next(p.opts[0] for p in click.get_current_context().command.params if p.name == given[0])
        raise click.UsageError(f"{flag} applies to a repository: banger vm run PATH {flag} ...")
    workspace.check_repo_options(repo)
    if detach and (remove or command):
        raise InvalidArgument("-d/--detach runs the VM in the background: it takes neither --rm nor a command")


def _dry_run(ctx: Context, path: str, repo: dict[str, object], *, nat: bool) -> api.WorkspacePrepareResult:
    """Prepare's dry run of the repo at ``path`` (its refusals, and the files it would ship), then the
    refusal of a tool bootstrap the VM could not download for."""
    dry = ctx.client.vm_workspace_prepare(workspace.prepare_request(None, path, **(repo | {"dry_run": True})))
    top = {f.path for f in dry.files if "/" not in f.path}
    plan.check_bootstrap_network(dry.host_root or path, top, nat=nat, no_bootstrap=bool(repo["no_bootstrap"]))
    return dry


def _prepare_workspace(ctx: Context, name: str, path: str, repo: dict[str, object], remove: bool) -> None:
    """Ship the repo at ``path`` into the new VM; with --rm a failure deletes the VM again."""
    try:
        workspace.print_prepared(ctx.client.vm_workspace_prepare(workspace.prepare_request(name, path, **repo)))
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
@click.option("--guest-path", type=params.TEXT,
              help="Run in this guest directory (relative to /root) instead of the workspace's.")
@click.option("--auto-prepare", is_flag=True,
              help="First copy the workspace's host repository into the VM again, as it was prepared "
                   "(the guest copy is replaced; refused when it has commits of its own).")
@pass_ctx
def vm_exec(ctx: Context, ref: str, guest_path: str | None, auto_prepare: bool) -> None:
    """Run the command after `--` in a VM (in its workspace directory, if any; through `mise exec` when the
    guest has mise); exit with its status. Warns when the host repository has moved on since the prepare."""
    command = guest_command()
    if not command:
        raise InvalidArgument("no command given", hint=f"banger vm exec {ref} -- CMD ...")
    workdir = plan.exec_dir(guest_path) if guest_path else None
    v = ctx.client.vm_show(ref)
    if auto_prepare:
        _prepare_again(ctx, v)
    else:
        _warn_if_behind(v)
    sys.exit(run_with_tools(ctx, v, command, workdir=workdir))


def _warn_if_behind(v: VM) -> None:
    """One line on stderr when the host repository's HEAD is not the commit the workspace was prepared at."""
    from banger.workspace.repo import head_of  # host git: only `vm exec` pays for it

    ws = v.workspace
    host = head_of(Path(ws.host_path)) if ws is not None else None
    if ws is not None and host is not None and host != ws.head_commit:
        render.echo(f"warning: {ws.guest_path} in VM {v.name} was prepared at {ws.head_commit[:12]}, "
                    f"{ws.host_path} is now at {host[:12]} (--auto-prepare copies it again first)",
                    stderr=True, keep="")


def _prepare_again(ctx: Context, v: VM) -> None:
    """`vm exec --auto-prepare`: the workspace's host repository into the VM again, as it was prepared."""
    ws = v.workspace
    if ws is None:
        raise InvalidArgument(f"VM {v.name!r} has no workspace to prepare again",
                              hint=f"`banger vm workspace prepare {v.name} PATH` first")
    rc = run_command(ctx, v.name, plan.resync_script(ws.guest_path, ws.head_commit, unmount=ws.offline),
                     workdir="/")
    if rc == plan.MOVED_STATUS:
        raise Conflict(f"{ws.guest_path} in VM {v.name!r} is no longer at the prepared commit "
                       f"{ws.head_commit[:12]}: --auto-prepare would lose the commits made there",
                       hint=f"keep them with `banger vm workspace export {v.name} -o FILE`, then "
                            f"`git reset --hard {ws.head_commit[:12]}` in the guest")
    if rc != 0:
        raise GuestError(f"emptying {ws.guest_path} in VM {v.name!r} for a new prepare failed ({rc})")
    workspace.print_prepared(ctx.client.vm_workspace_prepare(api.WorkspacePrepare(
        ref=v.name, path=ws.host_path, guest_path=ws.guest_path, mode=ws.mode, branch=ws.branch)))


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
