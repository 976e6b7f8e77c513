"""Per-invocation state shared by commands: the layout, config and a lazily connected client."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import click

from banger import install, paths
from banger.client import Client

if TYPE_CHECKING:
    from banger import config

P = ParamSpec("P")
R = TypeVar("R")
INVOKED = "banger.invoked"  # key in click's shared ctx.meta: the running command's context (for its flags)


@dataclass
class Context:
    target: install.Target = field(default_factory=install.client_target)
    _config: config.Config | None = None
    _client: Client | None = None

    @property
    def layout(self) -> paths.Layout:
        return self.target.layout

    @property
    def config(self) -> config.Config:
        if self._config is None:
            from banger import config  # pydantic: only commands that read the config (or start bangerd)

            self._config = config.load(self.layout.config_file)
        return self._config

    @property
    def client(self) -> Client:
        if self._client is None:
            system = self.target.system
            # A system install's daemon is systemd's to start; the CLI never starts a second one. A bad
            # config.toml fails before any daemon starts, with the key named (a running one has read it).
            self._client = Client.connect(self.layout, autostart=system is None,
                                          daemon_uid=system.owner_uid if system else None,
                                          before_start=lambda: self.config)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def pass_ctx(f: Callable[Concatenate[Context, P], R]) -> Callable[P, R]:
    """Pass banger's Context as the first argument (like ``click.make_pass_decorator``), noting which
    command runs so an error about a request field can name that command's flag."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        click_ctx = click.get_current_context()
        click_ctx.meta[INVOKED] = click_ctx  # meta is shared by every context of the invocation
        return click_ctx.invoke(f, click_ctx.ensure_object(Context), *args, **kwargs)

    return functools.update_wrapper(wrapper, f)
