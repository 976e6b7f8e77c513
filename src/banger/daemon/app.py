"""The composition root: ``Daemon.open`` builds the store, services and server and wires them together."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from banger import __version__, ipam
from banger.config import Config
from banger.daemon.dns import VmDnsServer
from banger.daemon.image_service import ImageService
from banger.daemon.kernel_service import KernelService
from banger.daemon.network import NetworkService
from banger.daemon.operations import Operations
from banger.daemon.runtime import RuntimeService
from banger.daemon.server import FRAME_TIMEOUT, Server
from banger.daemon.vm_service import VMService
from banger.daemon.workspace_service import WorkspaceService
from banger.errors import BangerError, MethodNotFound, invalid_params
from banger.guest import ssh
from banger.host.privileged import Privileged, local
from banger.model import now
from banger.paths import Layout
from banger.store.db import open_db
from banger.store.repo import Store

log = logging.getLogger("banger.daemon")


class Daemon:
    """Holds everything the RPC handlers need; no globals anywhere else."""

    def __init__(self, config: Config, layout: Layout, store: Store, priv: Privileged, *,
                 version: str = __version__, frame_timeout: float = FRAME_TIMEOUT):
        self.config = config
        self.layout = layout
        self.store = store
        self.version = version
        self.started_at: datetime = now()
        self.operations = Operations()
        self.kernels = KernelService(config, layout, store, self.operations)
        self.images = ImageService(config, layout, store, self.operations, self.kernels, priv)
        self.network = NetworkService(config, priv, tag=ipam.daemon_tag(str(layout.state_dir)))
        self.runtimes = RuntimeService(config, layout, priv)
        self.key_path = Path(config.ssh_key_path).expanduser() if config.ssh_key_path else layout.ssh_dir / "id_ed25519"
        self.vms = VMService(config, layout, store, self.operations, self.images, self.kernels, self.network,
                             self.runtimes, self.key_path)
        self.workspaces = WorkspaceService(layout, store, self.vms)
        self.vms.workspaces = self.workspaces  # create builds a clone's workspace disk through it
        self._background: list[asyncio.Task[None]] = []
        self.dns = VmDnsServer(self.vms.resolve_dns)
        self.dns_status = "not started"
        self.server = Server(layout.socket, self.dispatch, frame_timeout=frame_timeout)
        self.stopping = asyncio.Event()

    @classmethod
    async def open(cls, config: Config, layout: Layout, *, priv: Privileged | None = None,
                   version: str = __version__, frame_timeout: float = FRAME_TIMEOUT) -> Daemon:
        from banger.daemon import reconcile

        layout.ensure()
        store = Store(open_db(layout.db))
        daemon = cls(config, layout, store, priv or local(), version=version, frame_timeout=frame_timeout)
        ssh.ensure_key(daemon.key_path)
        await reconcile.adopt_all(daemon.vms)
        daemon._background = [
            asyncio.create_task(reconcile.watch(daemon.vms), name="vm-watcher"),
            asyncio.create_task(reconcile.reap_stale(daemon.vms), name="stale-reaper"),
        ]
        await daemon._start_dns()
        await daemon.server.start()
        layout.pid_file.write_text(f"{os.getpid()}\n")
        log.info("bangerd started", extra={"version": version, "socket": str(layout.socket), "pid": os.getpid()})
        return daemon

    async def _start_dns(self) -> None:
        """Serve ``<name>.vm`` for running VMs; a taken port costs the names, not the daemon."""
        if not self.config.dns_listen:
            self.dns_status = "off (dns_listen is empty)"
            return
        host, _, port = self.config.dns_listen.rpartition(":")
        try:
            await self.dns.start(host, int(port))
            self.dns_status = f"serving {self.config.dns_listen}"
        except BangerError as exc:
            self.dns_status = f"not serving: {exc.message}; set dns_listen in config.toml to a free address"
            log.warning("DNS server not started", extra={"error": exc.message})

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
            raise invalid_params(f"{method}: invalid params", exc) from exc
        result = await entry.handler(self, parsed)
        if not isinstance(result, entry.rpc.result):  # the declaration is the contract the client decodes by
            raise TypeError(f"{method} returned {type(result).__name__}, not {entry.rpc.result.__name__}")
        return result.model_dump(mode="json")

    async def serve_forever(self) -> None:
        await self.stopping.wait()

    async def close(self) -> None:
        await self.server.close()
        await self.operations.close()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.vms.exec.close()
        await self.network.close()
        await self.dns.close()
        self.store.close()
        try:
            if self.layout.pid_file.read_text().strip() == str(os.getpid()):
                self.layout.pid_file.unlink()
        except OSError:
            pass
        log.info("bangerd stopped")
