"""``banger image ...``: build, pull, export, register, promote, delete and list VM images."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from banger import api
from banger.cli import completion, params, render
from banger.cli.context import Context, pass_ctx
from banger.cli.progress import run
from banger.errors import ProtocolError

if TYPE_CHECKING:
    from banger.wire import Operation

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
existing_file = params.EXISTING_FILE


def local_path(source: str) -> str:
    """``source`` made absolute when it names a local file (the daemon has its own working directory)."""
    if source.startswith(("http://", "https://")):
        return source
    if os.path.exists(source) or source.endswith(".tar.zst") or source.startswith(("./", "../", "/")):
        return os.path.abspath(source)
    return source


def _installed(op: Operation) -> None:
    if isinstance(op.result, api.ImageInstalled):
        image = op.result.image
        render.echo(f"image {image.name} ready (kernel {image.kernel_ref or 'bundled'})", stderr=True)
    for line in op.notes:
        render.echo(line, stderr=True)


@click.group()
def image() -> None:
    """Build, pull and manage VM images."""


@image.command("list")
@json_option
@pass_ctx
def image_list(ctx: Context, as_json: bool) -> None:
    """List local images."""
    if as_json:  # the daemon's JSON as it came (no pydantic)
        render.as_json(ctx.client.call_raw(api.IMAGE_LIST)["images"])
        return
    images = ctx.client.image_list()
    rows = [[i.name, i.distro, i.kernel_ref, i.source, render.size(i.rootfs_size), render.ago(i.created_at)]
            for i in images]
    render.table(["NAME", "DISTRO", "KERNEL", "SOURCE", "SIZE", "CREATED"], rows,
                 empty="no images yet; `banger image build` makes the default one")


@image.command("show")
@click.argument("name", shell_complete=completion.images)
@json_option
@pass_ctx
def image_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show one image and its manifest."""
    i = ctx.client.image_show(name)
    if as_json:
        render.as_json(i)
        return
    render.fields([("name", i.name), ("distro", i.distro), ("arch", i.arch), ("kernel", i.kernel_ref),
                   ("source", i.source), ("size", render.size(i.rootfs_size)), ("dir", i.dir),
                   ("rootfs sha256", i.rootfs_sha256),
                   ("created", i.created_at.isoformat(timespec="seconds"))])


@image.command("build")
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Replace the image if it exists.")
@click.option("--no-cache", is_flag=True, help="Bootstrap again even if a cached build has the same inputs.")
@pass_ctx
def image_build(ctx: Context, name: str | None, force: bool, no_cache: bool) -> None:
    """Build the Debian golden image (as NAME, default debian-bookworm)."""
    _installed(run(ctx.client, lambda: ctx.client.image_build(name, force=force, no_cache=no_cache)))


@image.command("pull")
@click.argument("source")
@click.option("--name", type=params.IMAGE_NAME, help="Register under this name (default: derived from SOURCE).")
@click.option("--sha256", type=params.SHA256,
              help="Expected sha256 of a bundle (required for URLs not in the catalog).")
@click.option("--force", is_flag=True, help="Replace the image if it exists.")
@click.option("--insecure", is_flag=True, help="Talk plain HTTP to the registry.")
@pass_ctx
def image_pull(ctx: Context, source: str, name: str | None, sha256: str | None, force: bool,
               insecure: bool) -> None:
    """Pull SOURCE: a catalog name, a bundle URL or .tar.zst file, or REGISTRY/REPO:TAG."""
    params = api.ImagePull(source=local_path(source), name=name, sha256=sha256, force=force, insecure=insecure)
    _installed(run(ctx.client, lambda: ctx.client.image_pull(params)))


@image.command("export")
@click.argument("name", shell_complete=completion.images)
@click.option("-o", "--output", required=True, type=params.TEXT, help="Bundle file to write, or a directory.")
@json_option
@pass_ctx
def image_export(ctx: Context, name: str, output: str, as_json: bool) -> None:
    """Write image NAME as a portable .tar.zst bundle."""
    op = run(ctx.client, lambda: ctx.client.image_export(name, os.path.abspath(output)))
    if not isinstance(op.result, api.ImageExported):
        raise ProtocolError(f"image.export ended without saying where the bundle is: {op.result!r}")
    if as_json:
        render.as_json(op.result)
        return
    render.echo(f"{op.result.sha256}  {op.result.path}")


@image.command("register")
@click.argument("name", shell_complete=completion.images)
@click.option("--rootfs", required=True, type=existing_file, help="An ext4 root filesystem image.")
@click.option("--kernel-ref", type=params.KERNEL_NAME, help="Kernel to boot it with (installed or in the catalog).")
@click.option("--kernel", type=existing_file, help="A vmlinux to import as kernel NAME.")
@click.option("--initrd", type=existing_file, help="Initrd to go with --kernel.")
@pass_ctx
def image_register(ctx: Context, name: str, rootfs: str, kernel_ref: str | None, kernel: str | None,
                   initrd: str | None) -> None:
    """Register an existing ext4 ROOTFS as image NAME."""
    params = api.ImageRegister(name=name, rootfs=os.path.abspath(rootfs), kernel_ref=kernel_ref,
                               kernel=os.path.abspath(kernel) if kernel else None,
                               initrd=os.path.abspath(initrd) if initrd else None)
    _installed(run(ctx.client, lambda: ctx.client.image_register(params)))


@image.command("promote")
@click.argument("name", shell_complete=completion.images)
@pass_ctx
def image_promote(ctx: Context, name: str) -> None:
    """Make image NAME the default for new VMs."""
    ctx.client.image_promote(name)
    render.echo(f"image {name} is now the default for new VMs", stderr=True)


@image.command("delete")
@click.argument("name", shell_complete=completion.images)
@pass_ctx
def image_delete(ctx: Context, name: str) -> None:
    """Delete image NAME (refused while a VM uses it)."""
    ctx.client.image_delete(name)
    render.echo(f"image {name} deleted", stderr=True)


@image.group("cache")
def cache() -> None:
    """Manage the image download and build cache."""


@cache.command("prune")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@json_option
@pass_ctx
def cache_prune(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """Remove cached blobs and builds no image needs."""
    result = ctx.client.image_cache_prune(dry_run)
    if as_json:
        render.as_json(result)
        return
    render.table(["PATH", "SIZE"], [[r.path, render.size(r.size)] for r in result.removed],
                 empty="nothing to prune")
    verb = "would free" if dry_run else "freed"
    render.err.print(f"{len(result.removed)} entries, {verb} {render.size(result.bytes)}")
