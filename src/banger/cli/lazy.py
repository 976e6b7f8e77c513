"""Groups whose subcommands are imported when they run, so a simple command loads only what it uses."""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    """A group whose subcommands live in modules imported on first use: ``{name: "module:attribute"}``.

    Importing such a module may also register commands on other groups (``vm_run`` adds ``vm run``).
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attribute = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def all_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """Every subcommand, loading them all (for walking the whole tree)."""
        return {name: cmd for name in self.list_commands(ctx) if (cmd := self.get_command(ctx, name)) is not None}
