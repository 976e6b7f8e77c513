"""The whole RPC surface in one table: method name -> (params model, handler).

Handlers decode (done by the dispatcher), call one service, and return a result model; nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from banger import api

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
        dns=d.dns_status,
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


async def vm_create(d: Daemon, p: api.VMCreate) -> api.OperationStarted:
    return api.OperationStarted(operation=d.vms.create(p))


async def vm_start(d: Daemon, p: api.VMRefs) -> api.FanOutResult:
    return api.FanOutResult(results=await d.vms.fan_out(p.refs, d.vms.start))


async def vm_stop(d: Daemon, p: api.VMRefs) -> api.FanOutResult:
    return api.FanOutResult(results=await d.vms.fan_out(p.refs, d.vms.stop))


async def vm_restart(d: Daemon, p: api.VMRefs) -> api.FanOutResult:
    return api.FanOutResult(results=await d.vms.fan_out(p.refs, d.vms.restart))


async def vm_kill(d: Daemon, p: api.VMRefs) -> api.FanOutResult:
    return api.FanOutResult(results=await d.vms.fan_out(p.refs, lambda r: d.vms.stop(r, graceful=False)))


async def vm_delete(d: Daemon, p: api.VMRefs) -> api.FanOutResult:
    return api.FanOutResult(results=await d.vms.fan_out(p.refs, d.vms.delete))


async def vm_prune(d: Daemon, p: api.Empty) -> api.VMList:
    return api.VMList(vms=await d.vms.prune())


async def vm_exec_start(d: Daemon, p: api.ExecStart) -> api.ExecStarted:
    vm = d.vms.running_vm(p.ref)
    d.vms.touch(vm)
    return await d.vms.exec.start(vm.id, vm.name, p)


async def vm_exec_read(d: Daemon, p: api.ExecRead) -> api.ExecOutput:
    return await d.vms.exec.read(p)


async def vm_exec_write(d: Daemon, p: api.ExecWrite) -> api.Ok:
    return await d.vms.exec.write(p)


async def vm_exec_signal(d: Daemon, p: api.ExecSignal) -> api.Ok:
    return await d.vms.exec.signal(p)


async def vm_templates_list(d: Daemon, p: api.Empty) -> api.TemplateList:
    return api.TemplateList(templates=[api.TemplateInfo(**t) for t in d.vms.templates.entries()])


async def vm_templates_prune(d: Daemon, p: api.TemplatesPrune) -> api.TemplatesPruned:
    return api.TemplatesPruned(removed=await d.vms.templates.prune(everything=p.all))


async def vm_templates_build(d: Daemon, p: api.VMCreate) -> api.OperationStarted:
    return api.OperationStarted(operation=d.vms.build_template(p))


async def vm_set(d: Daemon, p: api.VMSet) -> Any:
    return await d.vms.set(p)


async def vm_logs(d: Daemon, p: api.VMLogs) -> api.VMLogsResult:
    return d.vms.logs(p)


async def vm_stats(d: Daemon, p: api.VMRef) -> api.VMStats:
    return d.vms.stats(p.ref)


async def vm_connect(d: Daemon, p: api.VMConnect) -> api.VMConnectInfo:
    return await d.vms.connect_info(p.ref, wait_ssh=p.wait_ssh)


async def vm_ports(d: Daemon, p: api.VMRefs) -> api.VMPortsResult:
    return await d.vms.ports(p.refs)


async def vm_workspace_prepare(d: Daemon, p: api.WorkspacePrepare) -> api.WorkspacePrepareResult:
    return await d.workspaces.prepare(p)


async def vm_workspace_export(d: Daemon, p: api.WorkspaceExport) -> api.WorkspaceExportResult:
    return await d.workspaces.export(p)


async def vm_workspace_export_read(d: Daemon, p: api.ExportRead) -> api.ExportChunk:
    return await d.workspaces.read_export(p.id, p.offset)


async def image_list(d: Daemon, p: api.Empty) -> api.ImageList:
    return api.ImageList(images=d.images.list_images())


async def image_show(d: Daemon, p: api.ImageRef) -> Any:
    return d.images.get(p.name)


async def image_build(d: Daemon, p: api.ImageBuild) -> api.OperationStarted:
    return api.OperationStarted(operation=d.images.start_build(p.name, p.force, p.no_cache))


async def image_pull(d: Daemon, p: api.ImagePull) -> api.OperationStarted:
    return api.OperationStarted(operation=d.images.start_pull(p))


async def image_export(d: Daemon, p: api.ImageExport) -> api.OperationStarted:
    return api.OperationStarted(operation=d.images.start_export(p.name, p.output))


async def image_register(d: Daemon, p: api.ImageRegister) -> api.OperationStarted:
    return api.OperationStarted(operation=d.images.start_register(p))


async def image_promote(d: Daemon, p: api.ImagePromote) -> Any:
    return await d.images.promote(p.name)


async def image_delete(d: Daemon, p: api.ImageRef) -> api.Ok:
    await d.images.delete(p.name)
    return api.Ok()


async def image_cache_prune(d: Daemon, p: api.CachePrune) -> api.CachePruneResult:
    return await d.images.prune_cache(p.dry_run)


async def kernel_list(d: Daemon, p: api.KernelListParams) -> api.KernelList:
    return d.kernels.list_kernels(p.available)


async def kernel_show(d: Daemon, p: api.KernelRef) -> Any:
    return d.kernels.get(p.name)


async def kernel_pull(d: Daemon, p: api.KernelPull) -> api.OperationStarted:
    return api.OperationStarted(operation=d.kernels.start_pull(p.name, p.force))


async def kernel_rm(d: Daemon, p: api.KernelRef) -> api.Ok:
    await d.kernels.remove(p.name)
    return api.Ok()


async def kernel_import(d: Daemon, p: api.KernelImport) -> Any:
    return await d.kernels.import_kernel(p.name, p.vmlinux, p.initrd)


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
    "vm.create": Method(api.VMCreate, vm_create),
    "vm.start": Method(api.VMRefs, vm_start),
    "vm.stop": Method(api.VMRefs, vm_stop),
    "vm.restart": Method(api.VMRefs, vm_restart),
    "vm.kill": Method(api.VMRefs, vm_kill),
    "vm.delete": Method(api.VMRefs, vm_delete),
    "vm.prune": Method(api.Empty, vm_prune),
    "vm.exec.start": Method(api.ExecStart, vm_exec_start),
    "vm.exec.read": Method(api.ExecRead, vm_exec_read),
    "vm.exec.write": Method(api.ExecWrite, vm_exec_write),
    "vm.exec.signal": Method(api.ExecSignal, vm_exec_signal),
    "vm.templates.list": Method(api.Empty, vm_templates_list),
    "vm.templates.prune": Method(api.TemplatesPrune, vm_templates_prune),
    "vm.templates.build": Method(api.VMCreate, vm_templates_build),
    "vm.set": Method(api.VMSet, vm_set),
    "vm.logs": Method(api.VMLogs, vm_logs),
    "vm.stats": Method(api.VMRef, vm_stats),
    "vm.connect": Method(api.VMConnect, vm_connect),
    "vm.ports": Method(api.VMRefs, vm_ports),
    "vm.workspace.prepare": Method(api.WorkspacePrepare, vm_workspace_prepare),
    "vm.workspace.export": Method(api.WorkspaceExport, vm_workspace_export),
    "vm.workspace.export.read": Method(api.ExportRead, vm_workspace_export_read),
    "image.list": Method(api.Empty, image_list),
    "image.show": Method(api.ImageRef, image_show),
    "image.build": Method(api.ImageBuild, image_build),
    "image.pull": Method(api.ImagePull, image_pull),
    "image.export": Method(api.ImageExport, image_export),
    "image.register": Method(api.ImageRegister, image_register),
    "image.promote": Method(api.ImagePromote, image_promote),
    "image.delete": Method(api.ImageRef, image_delete),
    "image.cache.prune": Method(api.CachePrune, image_cache_prune),
    "kernel.list": Method(api.KernelListParams, kernel_list),
    "kernel.show": Method(api.KernelRef, kernel_show),
    "kernel.pull": Method(api.KernelPull, kernel_pull),
    "kernel.rm": Method(api.KernelRef, kernel_rm),
    "kernel.import": Method(api.KernelImport, kernel_import),
}
