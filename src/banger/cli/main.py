"""The root ``banger`` group and the one place errors become messages and exit codes.

Command modules are imported when their command runs (:class:`LazyGroup`): ``banger vm list --json``
loads click, the vm module and the client, not rich, pydantic, asyncio or the other nouns.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from banger import __version__
from banger.cli import params, render
from banger.cli.context import INVOKED, Context
from banger.cli.lazy import LazyGroup
from banger.errors import BangerError


class BangerGroup(LazyGroup):
    """Turns banger errors into one or two lines on stderr and the error's exit code; no tracebacks.

    Messages carry text from outside (paths, names, guest output): they are printed cleaned and never as
    markup. (click's own usage errors already show bad arguments as Python reprs, escapes and all.) A request
    model that refuses a value the option types let through becomes a usage error naming the flag.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BangerError as exc:
            render.error(exc.message, exc.hint)
            sys.exit(exc.exit_code)
        except ValueError as exc:  # pydantic's ValidationError is one; it is only imported when a model is built
            if type(exc).__name__ != "ValidationError":
                raise
            usage = params.usage_error(exc, ctx.meta.get(INVOKED))  # type: ignore[arg-type]
            if usage is None:
                raise
            raise usage from None
        except KeyboardInterrupt:
            render.err.print("interrupted")
            sys.exit(130)


COMMANDS = {
    "vm": "banger.cli.vm:vm",
    "ps": "banger.cli.vm:ps",
    "image": "banger.cli.image:image",
    "kernel": "banger.cli.kernel:kernel",
    "daemon": "banger.cli.daemon:daemon",
    "doctor": "banger.cli.doctor:doctor",
    "ssh-config": "banger.cli.ssh_config:ssh_config",
    "system": "banger.cli.system:system",
    "completion": "banger.cli.completion:completion",
    "mcp": "banger.cli.mcp:mcp",
}


@click.group(cls=BangerGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="banger")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """banger: one-command development sandboxes on real microVMs."""
    state = ctx.ensure_object(Context)
    ctx.call_on_close(state.close)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def version(as_json: bool) -> None:
    """banger's version, the commit it was built from and when."""
    from banger import buildinfo

    info = buildinfo.read()
    if as_json:
        render.as_json(info)
    else:
        render.fields([("version", info["version"]), ("commit", info["commit"]), ("built", info["build_date"])])


cli.add_command(version)


def main() -> None:
    cli(prog_name="banger")
