"""The root ``banger`` group and the one place errors become messages and exit codes."""

from __future__ import annotations

import sys
from typing import Any

import click
from pydantic import ValidationError

from banger import __version__
from banger.cli import params, render
from banger.cli.context import INVOKED, Context
from banger.errors import BangerError


class BangerGroup(click.Group):
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
        except ValidationError as exc:
            usage = params.usage_error(exc, ctx.meta.get(INVOKED))
            if usage is None:
                raise
            raise usage from None
        except KeyboardInterrupt:
            render.err.print("interrupted")
            sys.exit(130)


@click.group(cls=BangerGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    from banger.cli import (  # noqa: F401  (templates, vm_run, workspace add to vm)
        completion,
        daemon,
        doctor,
        image,
        kernel,
        ssh_config,
        system,
        templates,
        vm,
        vm_run,
        workspace,
    )

    cli.add_command(vm.vm)
    cli.add_command(vm.ps)
    cli.add_command(image.image)
    cli.add_command(kernel.kernel)
    cli.add_command(daemon.daemon)
    cli.add_command(doctor.doctor)
    cli.add_command(ssh_config.ssh_config)
    cli.add_command(system.system)
    cli.add_command(completion.completion)
    cli.add_command(version)


_register()


def main() -> None:
    cli(prog_name="banger")
