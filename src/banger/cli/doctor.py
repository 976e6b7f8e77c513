"""``banger doctor``."""

from __future__ import annotations

import sys

import click

from banger.cli import render
from banger.cli.context import Context, pass_ctx

_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def doctor(ctx: Context, as_json: bool) -> None:
    """Check this host for everything banger needs (read-only)."""
    from banger import doctor as diagnostics

    checks = diagnostics.run_checks(ctx.config, ctx.layout)
    if as_json:
        render.as_json(checks)
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            line = f"[{_STYLE[c.status]}]{c.status}[/] {c.name.ljust(width)}  {c.detail}"
            render.out.print(line, highlight=False)
            if c.fix and c.status != "PASS":
                render.out.print(f"     {' ' * width}  fix: {c.fix}", markup=False)
    if any(c.status == "FAIL" for c in checks):
        sys.exit(1)
