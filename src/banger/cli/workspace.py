"""``banger vm workspace prepare | export``: a repository into a VM, its changes back as a git patch."""

from __future__ import annotations

import base64
import sys
from typing import Any

import click

from banger import api
from banger.cli import completion, params, render
from banger.cli.context import Context, pass_ctx
from banger.cli.vm import json_option, vm
from banger.client import Client
from banger.errors import InvalidArgument


@vm.group("workspace")
def workspace() -> None:
    """Ship a git repository into a VM and bring its changes home as a patch."""


def prepare_request(ref: str | None, path: str, **opts: object) -> api.WorkspacePrepare:
    """The prepare params for ``path`` resolved on this host (shared with `vm run PATH`)."""
    from banger.sdk import prepare_request

    return prepare_request(ref, path, **opts)


def print_prepared(result: api.WorkspacePrepareResult) -> None:
    """One summary line on stderr, plus any notes (tool bootstrap)."""
    ws = result.workspace
    if ws is not None and ws.offline:
        render.echo(f"workspace {ws.guest_path} <- {ws.host_path} @ {ws.head_commit[:12]} ({ws.mode}): "
                    f"{result.file_count} files built into a disk in {result.seconds:.1f}s", stderr=True)
    elif ws is not None:
        render.echo(f"workspace {ws.guest_path} <- {ws.host_path} @ {ws.head_commit[:12]} ({ws.mode}): "
                    f"{result.file_count} files, {render.size(result.bytes_sent)} sent in "
                    f"{result.seconds:.1f}s", stderr=True)
    for note in result.notes:
        render.echo(note, stderr=True)


REPO_OPTIONS = ("mode", "include_untracked", "branch", "from_ref", "dry_run", "no_bootstrap")


def repo_options(f):  # type: ignore[no-untyped-def]
    """The options of a repository shipped into a VM, shared by `vm workspace prepare` and `vm run PATH`
    (unset ones are None or False: `vm run` tells which were given)."""
    for opt in reversed([
        click.option("--mode", type=params.WORKSPACE_MODE,
                     help="shallow (default): only HEAD's commit; full_copy: the whole .git (submodules allowed)."),
        click.option("--include-untracked", is_flag=True, help="Also ship untracked files that are not ignored."),
        click.option("--branch", type=params.TEXT, help="Create and check out this guest-only branch."),
        click.option("--from", "from_ref", type=params.TEXT,
                     help="Start --branch at this commit (its tree is checked out)."),
        click.option("--dry-run", is_flag=True, help="List what would be shipped; no VM is touched or made."),
        click.option("--no-bootstrap", is_flag=True, help="Do not start `mise install` in the guest."),
    ]):
        f = opt(f)
    return f


def check_repo_options(opts: dict[str, object]) -> None:
    """Usage errors the option types cannot catch alone."""
    if opts.get("from_ref") and not opts.get("branch"):
        raise click.UsageError("--from needs --branch NAME")


@workspace.command("prepare")
@click.argument("ref", shell_complete=completion.vms)
@click.argument("path", type=click.Path(file_okay=True, dir_okay=True))
@repo_options
@click.option("--guest-path", type=params.TEXT, help="Where in the VM (under /root; default /root/repo).")
@json_option
@pass_ctx
def prepare(ctx: Context, ref: str, path: str, as_json: bool, **opts: object) -> None:
    """Copy the git repository at PATH into VM REF, with HEAD equal to the host's HEAD."""
    check_repo_options(opts)
    result = ctx.client.vm_workspace_prepare(prepare_request(ref, path, **opts))
    if as_json:
        render.as_json(result)
    elif result.dry_run:
        print_dry_run(result)
    else:
        print_prepared(result)


def print_dry_run(result: api.WorkspacePrepareResult) -> None:
    """Every path that would be shipped on stdout, one a line; a summary on stderr."""
    for f in result.files:
        render.echo(f"{f.size:>12}  {f.path}", keep="")  # one line per file, whatever its name holds
    render.echo(f"{result.file_count} files, {render.size(result.file_bytes)} from {result.host_root} "
                f"@ {(result.head_commit or '')[:12]}, plus about {render.size(result.history_bytes)} "
                "of git history (dry run: nothing was sent)", stderr=True)


@workspace.command("export")
@click.argument("ref", shell_complete=completion.vms)
@click.option("--base-commit", type=params.TEXT, help="Diff against this commit (default: the prepared HEAD).")
@click.option("-o", "--output", type=params.File(dir_okay=False, writable=True),
              help="Write the patch here instead of stdout.")
@json_option
@pass_ctx
def export(ctx: Context, ref: str, base_commit: str | None, output: str | None, as_json: bool) -> None:
    """Everything changed in VM REF's workspace (commits, edits, new files) as one patch for `git apply`."""
    # Plain JSON both ways (no models loaded): the command's own cost stays small beside the guest's.
    result = ctx.client.call_raw(api.WORKSPACE_EXPORT, {"ref": ref, **({"base_commit": base_commit}
                                                                        if base_commit is not None else {})})
    if as_json and output is None:
        render.as_json({k: v for k, v in result.items() if k != "export_id"}
                       | {"patch_b64": _patch_b64(ctx.client, result)})
        return
    write_patch(ctx.client, result, output)
    render.echo(f"{len(result['changed_paths'])} path(s) changed since {result['base_commit'][:12]}, "
                f"{render.size(result['patch_bytes'])} patch" + (f" written to {output}" if output else ""),
                stderr=True)


def write_patch(client: Client, result: api.WorkspaceExportResult | dict[str, Any], output: str | None) -> None:
    """Put the patch on stdout or in ``output``; a big one is read from the daemon over the socket in chunks."""
    try:
        sink = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    except OSError as exc:
        raise InvalidArgument(f"cannot write the patch to {output}: {exc.strerror}",
                              hint="pick another -o path, or leave -o out for stdout") from exc
    try:
        for chunk in client.export_chunks(result):
            sink.write(chunk)
        sink.flush()
    finally:
        if output:
            sink.close()


def _patch_b64(client: Client, result: dict[str, Any]) -> str:
    return base64.b64encode(b"".join(client.export_chunks(result))).decode()
