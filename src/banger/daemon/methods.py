"""The whole RPC surface in one table: each ``banger.api`` declaration -> its handler.

Handlers decode (done by the dispatcher), call one service, and return the declared result model;
nothing else. A declaration without a handler (or a handler for something undeclared) stops the
daemon at import, so the table and ``api`` cannot drift apart.
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
    rpc: api.Rpc[Any, Any]
    handler: Callable[[Daemon, Any], Awaitable[Any]]

    @property
    def params(self) -> type[api.Params]:
        return self.rpc.params  # type: ignore[no-any-return]


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


HANDLERS: dict[api.Rpc[Any, Any], Callable[[Daemon, Any], Awaitable[Any]]] = {
    api.DAEMON_PING: ping,
    api.DAEMON_STATUS: status,
    api.DAEMON_SHUTDOWN: shutdown,
    api.OPERATIONS_LIST: operations_list,
    api.OPERATION_GET: operation_get,
    api.OPERATION_WAIT: operation_wait,
    api.OPERATION_CANCEL: operation_cancel,
    api.VM_LIST: vm_list,
    api.VM_SHOW: vm_show,
    api.VM_CREATE: vm_create,
    api.VM_START: vm_start,
    api.VM_STOP: vm_stop,
    api.VM_RESTART: vm_restart,
    api.VM_KILL: vm_kill,
    api.VM_DELETE: vm_delete,
    api.VM_PRUNE: vm_prune,
    api.VM_EXEC_START: vm_exec_start,
    api.VM_EXEC_READ: vm_exec_read,
    api.VM_EXEC_WRITE: vm_exec_write,
    api.VM_EXEC_SIGNAL: vm_exec_signal,
    api.VM_TEMPLATES_LIST: vm_templates_list,
    api.VM_TEMPLATES_PRUNE: vm_templates_prune,
    api.VM_TEMPLATES_BUILD: vm_templates_build,
    api.VM_SET: vm_set,
    api.VM_LOGS: vm_logs,
    api.VM_STATS: vm_stats,
    api.VM_CONNECT: vm_connect,
    api.VM_PORTS: vm_ports,
    api.WORKSPACE_PREPARE: vm_workspace_prepare,
    api.WORKSPACE_EXPORT: vm_workspace_export,
    api.WORKSPACE_EXPORT_READ: vm_workspace_export_read,
    api.IMAGE_LIST: image_list,
    api.IMAGE_SHOW: image_show,
    api.IMAGE_BUILD: image_build,
    api.IMAGE_PULL: image_pull,
    api.IMAGE_EXPORT: image_export,
    api.IMAGE_REGISTER: image_register,
    api.IMAGE_PROMOTE: image_promote,
    api.IMAGE_DELETE: image_delete,
    api.IMAGE_CACHE_PRUNE: image_cache_prune,
    api.KERNEL_LIST: kernel_list,
    api.KERNEL_SHOW: kernel_show,
    api.KERNEL_PULL: kernel_pull,
    api.KERNEL_RM: kernel_rm,
    api.KERNEL_IMPORT: kernel_import,
}


def _table() -> dict[str, Method]:
    missing = sorted(set(api.RPCS) - {rpc.name for rpc in HANDLERS})
    undeclared = sorted(rpc.name for rpc in HANDLERS if api.RPCS.get(rpc.name) is not rpc)
    if missing or undeclared:
        raise RuntimeError(f"daemon.methods and banger.api disagree: no handler for {missing}, "
                           f"not declared: {undeclared}")
    return {rpc.name: Method(rpc, handler) for rpc, handler in HANDLERS.items()}


METHODS: dict[str, Method] = _table()
