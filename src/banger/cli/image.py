"""``banger image ...``."""

from __future__ import annotations

import click

from banger.cli import render
from banger.cli.context import Context, pass_ctx

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def image() -> None:
    """Build, pull and manage VM images."""


@image.command("list")
@json_option
@pass_ctx
def image_list(ctx: Context, as_json: bool) -> None:
    """List local images."""
    images = ctx.client.image_list()
    if as_json:
        render.as_json(images)
        return
    rows = [[i.name, i.distro, i.kernel_ref, i.source, render.size(i.rootfs_size), render.ago(i.created_at)]
            for i in images]
    render.table(["NAME", "DISTRO", "KERNEL", "SOURCE", "SIZE", "CREATED"], rows,
                 empty="no images yet; `banger image build` makes the default one")


@image.command("show")
@click.argument("name")
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
                   ("created", i.created_at.isoformat(timespec="seconds"))])
