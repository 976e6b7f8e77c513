"""``banger completion bash|zsh|fish`` and the live names it completes (VMs, images, kernels).

Completion runs the CLI with ``_BANGER_COMPLETE`` set (click's mechanism); names come from the daemon that
the CLI would talk to, without starting one: when it is down, nothing is offered, quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from banger import api

if TYPE_CHECKING:
    from banger.client import Client

SHELLS = ("bash", "zsh", "fish")


def _names(fetch: Callable[[Client], list[str]]) -> Callable[[click.Context, click.Parameter, str],
                                                                  list[CompletionItem]]:
    def complete(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        from banger import install
        from banger.client import Client

        try:
            target = install.client_target()
            system = target.system
            with Client.connect(target.layout, autostart=False,
                                daemon_uid=system.owner_uid if system else None) as client:
                names = fetch(client)
        except Exception:  # completion must never print an error into the user's prompt
            return []
        return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]

    return complete


# The daemon's JSON as it comes (no models: a TAB must not pay for pydantic).
vms = _names(lambda c: [str(v["name"]) for v in c.call_raw(api.VM_LIST)["vms"]])
images = _names(lambda c: [str(i["name"]) for i in c.call_raw(api.IMAGE_LIST)["images"]])
kernels = _names(lambda c: [str(k["name"]) for k in c.call_raw(api.KERNEL_LIST, {})["kernels"]])


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL; e.g. `banger completion bash > /etc/bash_completion.d/banger`."""
    from click.shell_completion import get_completion_class

    from banger.cli.main import cli

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(cli, {}, "banger", "_BANGER_COMPLETE").source())
