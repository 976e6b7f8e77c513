"""The whole RPC surface in one table: method name -> (params model, handler).

Handlers decode (done by the dispatcher), call one service, and return a result model; nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from banger import api
from banger.errors import NotFound

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


@dataclass(frozen=True)
class Method:
    params: type[api.Params]
    handler: Callable[[Daemon, Any], Awaitable[Any]]


# --- daemon -------------------------------------------------------------------------------------------


def _ping(d: Daemon) -> api.PingResult:
    return api.PingResult(
        version=d.version, pid=os.getpid(), started_at=d.started_at,
        socket=str(d.layout.socket), state_dir=str(d.layout.state_dir),
    )


async def ping(d: Daemon, p: api.Empty) -> api.PingResult:
    return _ping(d)


async def status(d: Daemon, p: api.Empty) -> api.DaemonStatus:
    from banger.store.db import schema_version

    return api.DaemonStatus(
        **_ping(d).model_dump(),
        vms=d.store.vm_counts(),
        images=len(d.store.list_images()),
        kernels=len(d.store.list_kernels()),
        operations_running=d.operations.running(),
        schema_version=schema_version(d.store.conn),
    )


async def shutdown(d: Daemon, p: api.Empty) -> api.Ok:
    d.stopping.set()
    return api.Ok()


async def operations_list(d: Daemon, p: api.Empty) -> api.OperationList:
    return api.OperationList(operations=d.operations.list())


async def operation_get(d: Daemon, p: api.OperationRef) -> Any:
    return d.operations.get(p.id)


async def operation_wait(d: Daemon, p: api.OperationWait) -> Any:
    return await d.operations.wait(p.id, p.timeout)


async def operation_cancel(d: Daemon, p: api.OperationRef) -> Any:
    return await d.operations.cancel(p.id)


# --- listings -----------------------------------------------------------------------------------------


async def vm_list(d: Daemon, p: api.Empty) -> api.VMList:
    return api.VMList(vms=d.store.list_vms())


async def vm_show(d: Daemon, p: api.VMRef) -> Any:
    return d.store.get_vm(p.ref)


async def image_list(d: Daemon, p: api.Empty) -> api.ImageList:
    return api.ImageList(images=d.store.list_images())


async def image_show(d: Daemon, p: api.ImageRef) -> Any:
    image = d.store.find_image(p.name)
    if image is None:
        raise NotFound(f"no image named {p.name!r}", hint="`banger image list` shows local images")
    return image


async def kernel_list(d: Daemon, p: api.KernelListParams) -> api.KernelList:
    return api.KernelList(kernels=d.store.list_kernels())


async def kernel_show(d: Daemon, p: api.KernelRef) -> Any:
    kernel = d.store.find_kernel(p.name)
    if kernel is None:
        raise NotFound(f"no kernel named {p.name!r}", hint="`banger kernel list --available` shows what can be pulled")
    return kernel


METHODS: dict[str, Method] = {
    "daemon.ping": Method(api.Empty, ping),
    "daemon.status": Method(api.Empty, status),
    "daemon.shutdown": Method(api.Empty, shutdown),
    "daemon.operations.list": Method(api.Empty, operations_list),
    "operation.get": Method(api.OperationRef, operation_get),
    "operation.wait": Method(api.OperationWait, operation_wait),
    "operation.cancel": Method(api.OperationRef, operation_cancel),
    "vm.list": Method(api.Empty, vm_list),
    "vm.show": Method(api.VMRef, vm_show),
    "image.list": Method(api.Empty, image_list),
    "image.show": Method(api.ImageRef, image_show),
    "kernel.list": Method(api.KernelListParams, kernel_list),
    "kernel.show": Method(api.KernelRef, kernel_show),
}
