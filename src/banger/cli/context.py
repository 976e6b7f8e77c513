"""Per-invocation state shared by commands: the layout, config and a lazily connected client."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from banger import config, paths
from banger.client import Client


@dataclass
class Context:
    layout: paths.Layout = field(default_factory=paths.layout_from_env)
    _config: config.Config | None = None
    _client: Client | None = None

    @property
    def config(self) -> config.Config:
        if self._config is None:
            self._config = config.load(self.layout.config_file)
        return self._config

    @property
    def client(self) -> Client:
        if self._client is None:
            self.config  # noqa: B018  (a bad config.toml fails here, with the key named, before any daemon)
            self._client = Client.connect(self.layout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_ctx = click.make_pass_decorator(Context, ensure=True)
