"""The wire: every RPC declared once, as its method name with its params and result models.

The daemon's method table (``daemon.methods``) pairs each declaration with a handler and refuses to
start if one is missing; the client's typed calls and the SDK take a declaration, never a name. The
models live in ``banger.wire`` and are loaded on first use: the CLI's simple commands read only the
names here and pass the daemon's JSON through, so they never import pydantic (``banger vm list --json``
starts in well under 100 ms). ``api.VMCreate`` and the like still work (they are looked up in
``banger.wire``), so a model is spelled the same wherever it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from banger import wire as w
    from banger.wire import *  # noqa: F403  (what __getattr__ below hands out, for the type checker)
else:
    class _Wire:
        """``banger.wire``, imported the first time a declaration's model is asked for."""

        def __getattr__(self, name: str) -> Any:
            from banger import wire

            return getattr(wire, name)

    w = _Wire()

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Rpc(Generic[P, R]):
    """One method: its name on the wire, and (lazily) the models of its params and its result."""

    name: str  # e.g. "vm.list"
    _params: Callable[[], type[P]] = field(repr=False, compare=False)
    _result: Callable[[], type[R]] = field(repr=False, compare=False)

    @property
    def params(self) -> type[P]:
        return self._params()

    @property
    def result(self) -> type[R]:
        return self._result()


def __getattr__(name: str) -> Any:
    """The wire's models by name (``api.VMCreate``), without importing pydantic until one is used."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(w, name)
    except AttributeError:
        raise AttributeError(f"module 'banger.api' has no attribute {name!r}") from None


# --- daemon -------------------------------------------------------------------------------------------
DAEMON_PING = Rpc("daemon.ping", lambda: w.Empty, lambda: w.PingResult)
DAEMON_STATUS = Rpc("daemon.status", lambda: w.Empty, lambda: w.DaemonStatus)
DAEMON_SHUTDOWN = Rpc("daemon.shutdown", lambda: w.Empty, lambda: w.Ok)
OPERATIONS_LIST = Rpc("daemon.operations.list", lambda: w.Empty, lambda: w.OperationList)
OPERATION_GET = Rpc("operation.get", lambda: w.OperationRef, lambda: w.Operation)
OPERATION_WAIT = Rpc("operation.wait", lambda: w.OperationWait, lambda: w.Operation)
OPERATION_CANCEL = Rpc("operation.cancel", lambda: w.OperationRef, lambda: w.Operation)

# --- VMs ----------------------------------------------------------------------------------------------
VM_LIST = Rpc("vm.list", lambda: w.Empty, lambda: w.VMList)
VM_SHOW = Rpc("vm.show", lambda: w.VMRef, lambda: w.VM)
VM_CREATE = Rpc("vm.create", lambda: w.VMCreate, lambda: w.OperationStarted)
VM_START = Rpc("vm.start", lambda: w.VMRefs, lambda: w.FanOutResult)
VM_STOP = Rpc("vm.stop", lambda: w.VMRefs, lambda: w.FanOutResult)
VM_RESTART = Rpc("vm.restart", lambda: w.VMRefs, lambda: w.FanOutResult)
VM_KILL = Rpc("vm.kill", lambda: w.VMRefs, lambda: w.FanOutResult)
VM_DELETE = Rpc("vm.delete", lambda: w.VMRefs, lambda: w.FanOutResult)
VM_PRUNE = Rpc("vm.prune", lambda: w.Empty, lambda: w.VMList)
VM_EXEC_START = Rpc("vm.exec.start", lambda: w.ExecStart, lambda: w.ExecStarted)
VM_EXEC_READ = Rpc("vm.exec.read", lambda: w.ExecRead, lambda: w.ExecOutput)
VM_EXEC_WRITE = Rpc("vm.exec.write", lambda: w.ExecWrite, lambda: w.Ok)
VM_EXEC_SIGNAL = Rpc("vm.exec.signal", lambda: w.ExecSignal, lambda: w.Ok)
VM_TEMPLATES_LIST = Rpc("vm.templates.list", lambda: w.Empty, lambda: w.TemplateList)
VM_TEMPLATES_PRUNE = Rpc("vm.templates.prune", lambda: w.TemplatesPrune, lambda: w.TemplatesPruned)
VM_TEMPLATES_BUILD = Rpc("vm.templates.build", lambda: w.VMCreate, lambda: w.OperationStarted)
VM_SET = Rpc("vm.set", lambda: w.VMSet, lambda: w.VM)
VM_LOGS = Rpc("vm.logs", lambda: w.VMLogs, lambda: w.VMLogsResult)
VM_STATS = Rpc("vm.stats", lambda: w.VMRef, lambda: w.VMStats)
VM_CONNECT = Rpc("vm.connect", lambda: w.VMConnect, lambda: w.VMConnectInfo)
VM_PORTS = Rpc("vm.ports", lambda: w.VMRefs, lambda: w.VMPortsResult)

# --- workspaces ---------------------------------------------------------------------------------------
WORKSPACE_PREPARE = Rpc("vm.workspace.prepare", lambda: w.WorkspacePrepare, lambda: w.WorkspacePrepareResult)
WORKSPACE_EXPORT = Rpc("vm.workspace.export", lambda: w.WorkspaceExport, lambda: w.WorkspaceExportResult)
WORKSPACE_EXPORT_READ = Rpc("vm.workspace.export.read", lambda: w.ExportRead, lambda: w.ExportChunk)

# --- images and kernels -------------------------------------------------------------------------------
IMAGE_LIST = Rpc("image.list", lambda: w.Empty, lambda: w.ImageList)
IMAGE_SHOW = Rpc("image.show", lambda: w.ImageRef, lambda: w.Image)
IMAGE_BUILD = Rpc("image.build", lambda: w.ImageBuild, lambda: w.OperationStarted)
IMAGE_PULL = Rpc("image.pull", lambda: w.ImagePull, lambda: w.OperationStarted)
IMAGE_EXPORT = Rpc("image.export", lambda: w.ImageExport, lambda: w.OperationStarted)
IMAGE_REGISTER = Rpc("image.register", lambda: w.ImageRegister, lambda: w.OperationStarted)
IMAGE_PROMOTE = Rpc("image.promote", lambda: w.ImagePromote, lambda: w.Image)
IMAGE_DELETE = Rpc("image.delete", lambda: w.ImageRef, lambda: w.Ok)
IMAGE_CACHE_PRUNE = Rpc("image.cache.prune", lambda: w.CachePrune, lambda: w.CachePruneResult)
KERNEL_LIST = Rpc("kernel.list", lambda: w.KernelListParams, lambda: w.KernelList)
KERNEL_SHOW = Rpc("kernel.show", lambda: w.KernelRef, lambda: w.Kernel)
KERNEL_PULL = Rpc("kernel.pull", lambda: w.KernelPull, lambda: w.OperationStarted)
KERNEL_RM = Rpc("kernel.rm", lambda: w.KernelRef, lambda: w.Ok)
KERNEL_IMPORT = Rpc("kernel.import", lambda: w.KernelImport, lambda: w.Kernel)

RPCS: dict[str, Rpc[Any, Any]] = {r.name: r for r in list(globals().values()) if isinstance(r, Rpc)}
