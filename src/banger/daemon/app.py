"""The composition root: ``Daemon.open`` builds the store, services and server and wires them together."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from banger import __version__
from banger.config import Config
from banger.daemon.operations import Operations
from banger.daemon.server import Server
from banger.errors import InvalidArgument, MethodNotFound
from banger.model import now
from banger.paths import Layout
from banger.store.db import open_db
from banger.store.repo import Store

log = logging.getLogger("banger.daemon")


class Daemon:
    """Holds everything the RPC handlers need; no globals anywhere else."""

    def __init__(self, config: Config, layout: Layout, store: Store, *, version: str = __version__):
        self.config = config
        self.layout = layout
        self.store = store
        self.version = version
        self.started_at: datetime = now()
        self.operations = Operations()
        self.server = Server(layout.socket, self.dispatch)
        self.stopping = asyncio.Event()

    @classmethod
    async def open(cls, config: Config, layout: Layout, *, version: str = __version__) -> Daemon:
        layout.ensure()
        store = Store(open_db(layout.db))
        daemon = cls(config, layout, store, version=version)
        await daemon.server.start()
        layout.pid_file.write_text(f"{os.getpid()}\n")
        log.info("bangerd started", extra={"version": version, "socket": str(layout.socket), "pid": os.getpid()})
        return daemon

    async def dispatch(self, method: str, params: dict[str, Any]) -> Any:
        from banger.daemon.methods import METHODS  # the table imports the services, which import this module

        entry = METHODS.get(method)
        if entry is None:
            raise MethodNotFound(
                f"unknown method {method!r}",
                hint="the CLI and daemon may be different versions; `banger daemon stop` restarts it",
            )
        try:
            parsed = entry.params.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "params"
            raise InvalidArgument(f"{method}: invalid params: {field}: {first['msg']}") from exc
        result = await entry.handler(self, parsed)
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result

    async def serve_forever(self) -> None:
        await self.stopping.wait()

    async def close(self) -> None:
        await self.server.close()
        await self.operations.close()
        self.store.close()
        try:
            if self.layout.pid_file.read_text().strip() == str(os.getpid()):
                self.layout.pid_file.unlink()
        except OSError:
            pass
        log.info("bangerd stopped")
