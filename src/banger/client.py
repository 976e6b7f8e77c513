"""The client library: one typed method per RPC, over the daemon's Unix socket.

``call(api.VM_LIST)`` decodes the result into the model ``banger.api`` declares (importing pydantic then);
``call_raw`` hands back the daemon's JSON as is, for the CLI's simple commands, which never import pydantic.

``Client.connect(layout)`` finds the daemon, starting ``bangerd`` on first use and replacing one that runs
a different version (a version handshake through ``daemon.ping``). Calls are synchronous: the CLI has no
event loop, and a blocking socket keeps a round trip to a few syscalls.

The client trusts only the real daemon: before connecting, the runtime directory holding the socket must
be a real directory (not a symlink) owned by the caller or root with no group/other permissions, and once
connected, the process at the other end (SO_PEERCRED) must run as the caller or root. Anything else is
PermissionDenied, and not a byte of a request is sent.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from banger import __version__, api
from banger import rpc as rpc_frame
from banger.errors import (
    BangerError,
    DaemonUnavailable,
    PermissionDenied,
    ProtocolError,
    from_rpc_error,
    invalid_params,
)
from banger.paths import Layout

if TYPE_CHECKING:
    from banger.model import VM, Image, Kernel
    from banger.wire import Operation

R = TypeVar("R")
START_TIMEOUT = 20.0


class Client:
    """A connection to bangerd; use :meth:`connect` rather than the constructor."""

    _installed_instead: str | None = None  # a daemon version this process found installed in place of its own

    def __init__(self, layout: Layout, sock: socket.socket, daemon_uid: int | None = None):
        self.layout = layout
        self.daemon_uid = daemon_uid
        self._sock = sock
        self._file = sock.makefile("rb")
        self._ids = itertools.count(1)

    # --- connecting ---------------------------------------------------------------------------------

    @classmethod
    def connect(cls, layout: Layout, *, autostart: bool = True, expect_version: str = __version__,
                daemon_uid: int | None = None, before_start: Callable[[], object] | None = None) -> Client:
        """A client for a daemon of ``expect_version``, starting or restarting bangerd as needed.

        ``daemon_uid``: the user the daemon runs as when it is not the caller (a system install's owner, for
        root's CLI); its runtime directory and socket may then belong to that user too. ``before_start``
        runs just before a daemon is started (the CLI checks config.toml there).
        """
        client = cls._try_connect(layout, daemon_uid)
        if client is None:
            if not autostart:
                raise DaemonUnavailable(f"bangerd is not running (no answer on {layout.socket})",
                                        hint="any banger command starts it, e.g. `banger daemon status`"
                                        if daemon_uid is None else
                                        "it is the system install's daemon: `systemctl start bangerd`, "
                                        "or see `banger system status`")
            if before_start is not None:
                before_start()
            return cls._start(layout)
        if not autostart:
            return client
        try:
            running = client.call_raw(api.DAEMON_PING)  # plain JSON: the handshake must not cost pydantic
        except BaseException:
            client.close()
            raise
        if running.get("version") == expect_version:
            return client
        if running.get("version") == cls._installed_instead:  # found out before: do not restart it again
            client.close()
            raise cls._outdated(expect_version, str(running.get("version")))
        if before_start is not None:
            before_start()
        client.shutdown()
        client.close()
        cls.wait_gone(layout, int(running["pid"]))
        started = cls._start(layout)
        now_running = str(started.call_raw(api.DAEMON_PING).get("version"))
        if now_running != expect_version:  # the installed banger changed under this long-lived process
            started.close()
            cls._installed_instead = now_running
            raise cls._outdated(expect_version, now_running)
        return started

    @staticmethod
    def _outdated(ours: str, installed: str) -> DaemonUnavailable:
        return DaemonUnavailable(f"this process runs banger {ours}, but the installed banger (and the daemon it "
                                 f"starts) is {installed}",
                                 hint="restart this program (e.g. `banger mcp` in your agent) so both match")

    @classmethod
    def _try_connect(cls, layout: Layout, daemon_uid: int | None = None) -> Client | None:
        """A connection to the daemon at ``layout.socket``; None when nothing listens there yet."""
        if not check_runtime_dir(layout.runtime_dir, daemon_uid):
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(layout.socket))
            check_peer(sock, layout.socket, daemon_uid)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"cannot connect to {layout.socket}: {exc}") from exc
        except PermissionDenied:
            sock.close()
            raise
        return cls(layout, sock, daemon_uid)

    @classmethod
    def _start(cls, layout: Layout) -> Client:
        from banger.host.run import spawn_detached  # asyncio and friends: only when starting the daemon

        layout.ensure()
        pid = spawn_detached([sys.executable, "-m", "banger.daemon"], log_path=layout.daemon_stdio_log)
        deadline = time.monotonic() + START_TIMEOUT
        exited_at = None
        while time.monotonic() < deadline:
            client = cls._try_connect(layout)
            if client is not None:
                return client
            # The one we started may have lost a race with another just started (two CLIs at once): it
            # exits, and the winner's socket appears; look a little longer before giving up.
            if exited_at is None and not _pid_alive(pid):
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > 2.0:
                break
            time.sleep(0.02)
        raise DaemonUnavailable(
            f"bangerd did not start: {_tail(layout.daemon_stdio_log) or 'no output'}",
            hint=f"see {layout.daemon_stdio_log} and {layout.daemon_log}",
        )

    @staticmethod
    def wait_gone(layout: Layout, pid: int, timeout: float = 15.0) -> None:
        """Wait until daemon ``pid`` has exited and its socket is gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not layout.socket.exists() and not _pid_alive(pid):
                return
            time.sleep(0.02)
        raise DaemonUnavailable(f"the old bangerd did not stop within {timeout:g}s",
                                hint=f"stop it by hand (pid in {layout.pid_file}) and retry")

    def another(self) -> Client:
        """A second connection to the same daemon (for a thread that calls while this one waits)."""
        client = self._try_connect(self.layout, self.daemon_uid)
        if client is None:
            raise DaemonUnavailable(f"bangerd stopped answering on {self.layout.socket}")
        return client

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calling ------------------------------------------------------------------------------------

    def call(self, rpc: api.Rpc[Any, R], params: Any = None) -> R:
        """Call ``rpc`` and decode its result into the declared model; errors are raised as banger's.

        ``params`` (the params model, or a dict of its fields) is checked against the declaration before
        anything is sent: a bad value is InvalidArgument naming the field, not a round trip.
        """
        if not hasattr(params, "model_dump"):
            from pydantic import ValidationError

            try:
                params = rpc.params.model_validate(params or {})  # type: ignore[attr-defined]
            except ValidationError as exc:
                raise invalid_params(rpc.name, exc) from None
        return rpc.result.model_validate(self.call_raw(rpc, params))  # type: ignore[attr-defined,no-any-return]

    def call_raw(self, rpc: api.Rpc[Any, Any], params: Any = None) -> Any:
        """Call ``rpc`` and return its result as the daemon sent it (plain JSON: no pydantic on this path).

        ``params``: the declared params model, or a dict the daemon validates against it.
        """
        if hasattr(params, "model_dump"):
            params = params.model_dump(mode="json", exclude_none=True)
        req_id = next(self._ids)
        try:
            try:
                self._sock.sendall(rpc_frame.encode(rpc_frame.request(rpc.name, params, req_id)))
            except BrokenPipeError:
                pass  # a refusing daemon answers and closes at once: its answer is still there to read
            reply = self._reply(rpc.name, req_id)
        except OSError as exc:
            raise DaemonUnavailable(f"lost the connection to bangerd during {rpc.name}: {exc}") from exc
        if "error" in reply:
            raise from_rpc_error(reply["error"])
        return reply.get("result")

    def _reply(self, method: str, req_id: int) -> dict[str, Any]:
        """The reply to request ``req_id``; replies to earlier, interrupted calls are skipped."""
        while True:
            line = self._file.readline()
            if not line:
                raise DaemonUnavailable(f"bangerd closed the connection during {method}",
                                        hint="`banger daemon logs` may say why")
            try:
                reply = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"bangerd sent a malformed reply to {method}") from exc
            if not isinstance(reply, dict):
                raise ProtocolError(f"bangerd sent a malformed reply to {method}")
            if reply.get("id") in (req_id, None):
                return reply

    # --- daemon -------------------------------------------------------------------------------------

    def ping(self) -> api.PingResult:
        return self.call(api.DAEMON_PING)

    def status(self) -> api.DaemonStatus:
        return self.call(api.DAEMON_STATUS)

    def shutdown(self) -> None:
        self.call_raw(api.DAEMON_SHUTDOWN)

    def operations(self) -> list[Operation]:
        return self.call(api.OPERATIONS_LIST).operations

    def operation(self, op_id: str) -> Operation:
        return self.call(api.OPERATION_GET, {"id": op_id})

    def operation_wait(self, op_id: str, timeout: float = 10.0) -> Operation:
        return self.call(api.OPERATION_WAIT, {"id": op_id, "timeout": timeout})

    def operation_cancel(self, op_id: str) -> Operation:
        return self.call(api.OPERATION_CANCEL, {"id": op_id})

    # --- VMs ----------------------------------------------------------------------------------------

    def vm_list(self) -> list[VM]:
        return self.call(api.VM_LIST).vms

    def vm_show(self, ref: str) -> VM:
        return self.call(api.VM_SHOW, {"ref": ref})

    def vm_create(self, req: api.VMCreate) -> Operation:
        return self.call(api.VM_CREATE, req).operation

    def vm_action(self, action: api.Rpc[api.VMRefs, api.FanOutResult], refs: list[str]) -> list[api.VMOutcome]:
        """``action`` (api.VM_START, VM_STOP, VM_RESTART, VM_KILL, VM_DELETE) on several VMs; one outcome per
        ref, in order."""
        return self.call(action, {"refs": refs}).results

    def vm_prune(self) -> list[VM]:
        return self.call(api.VM_PRUNE).vms

    def vm_exec_start(self, req: api.ExecStart) -> str:
        return self.call(api.VM_EXEC_START, req).id

    def vm_exec_read(self, exec_id: str, offset: int, wait: float = 25.0) -> api.ExecOutput:
        return self.call(api.VM_EXEC_READ, {"id": exec_id, "offset": offset, "wait": wait})

    def vm_exec_write(self, exec_id: str, data: str = "", eof: bool = False) -> None:
        self.call_raw(api.VM_EXEC_WRITE, {"id": exec_id, "data": data, "eof": eof})

    def vm_exec_drain(self, exec_id: str, sink: Callable[[str, bytes], None]) -> int:
        """Long-poll a command's output into ``sink(stream, data)`` until it ends; its exit status (an
        agent failure is raised as the banger error it was)."""
        offset = 0
        while True:
            out = self.vm_exec_read(exec_id, offset)
            for event in out.events:
                sink(event.stream, base64.b64decode(event.data))
            offset = out.offset
            if out.done:
                if out.error is not None:
                    raise from_rpc_error(out.error)
                return out.status if out.status is not None else 255

    def vm_exec_feed(self, exec_id: str, chunks: Iterable[bytes]) -> threading.Thread:
        """Copy ``chunks`` into a command's stdin and then close it, from a thread on a second connection
        (this one stays free to read the command's output meanwhile: input written first could stall
        against output nobody reads). The thread is a daemon thread; it stops when the command ends."""
        side = self.another()

        def feed() -> None:
            try:
                with side:
                    for chunk in chunks:
                        side.vm_exec_write(exec_id, base64.b64encode(chunk).decode())
                    side.vm_exec_write(exec_id, eof=True)
            except (BangerError, OSError):
                pass  # the command ended (or the daemon went): its input no longer matters

        thread = threading.Thread(target=feed, name="banger-stdin", daemon=True)
        thread.start()
        return thread

    def vm_exec_signal(self, exec_id: str, signal: int) -> None:
        self.call_raw(api.VM_EXEC_SIGNAL, {"id": exec_id, "signal": signal})

    def vm_templates_list(self) -> list[api.TemplateInfo]:
        return self.call(api.VM_TEMPLATES_LIST).templates

    def vm_templates_prune(self, everything: bool = False) -> list[str]:
        return self.call(api.VM_TEMPLATES_PRUNE, {"all": everything}).removed

    def vm_templates_build(self, req: api.VMCreate) -> Operation:
        return self.call(api.VM_TEMPLATES_BUILD, req).operation

    def vm_set(self, req: api.VMSet) -> VM:
        return self.call(api.VM_SET, req)

    def vm_logs(self, ref: str, offset: int = 0) -> api.VMLogsResult:
        return self.call(api.VM_LOGS, {"ref": ref, "offset": offset, "max_bytes": 1 << 20})

    def vm_connect(self, ref: str, wait_ssh: bool = True) -> api.VMConnectInfo:
        return self.call(api.VM_CONNECT, {"ref": ref, "wait_ssh": wait_ssh})

    def vm_ports(self, refs: list[str]) -> list[api.VMPorts]:
        return self.call(api.VM_PORTS, {"refs": refs}).vms

    def vm_stats(self, ref: str) -> api.VMStats:
        return self.call(api.VM_STATS, {"ref": ref})

    def vm_workspace_prepare(self, req: api.WorkspacePrepare) -> api.WorkspacePrepareResult:
        return self.call(api.WORKSPACE_PREPARE, req)

    def vm_workspace_export(self, req: api.WorkspaceExport) -> api.WorkspaceExportResult:
        return self.call(api.WORKSPACE_EXPORT, req)

    def vm_workspace_export_read(self, export_id: str, offset: int) -> api.ExportChunk:
        return self.call(api.WORKSPACE_EXPORT_READ, {"id": export_id, "offset": offset})

    def export_chunks(self, result: api.WorkspaceExportResult | dict[str, Any]) -> Iterator[bytes]:
        """The patch of an export: inline, or read from the daemon in chunks when it is big. ``result``: the
        export's model, or its plain JSON from :meth:`call_raw` (the chunks are read as plain JSON too: a
        reply is megabytes of base64 that a model would only check is a string)."""
        raw = result if isinstance(result, dict) else {"export_id": result.export_id, "patch_b64": result.patch_b64}
        export_id = raw.get("export_id")
        if export_id is None:
            yield base64.b64decode(raw.get("patch_b64") or "")
            return
        offset, eof = 0, False
        while not eof:
            chunk = self.call_raw(api.WORKSPACE_EXPORT_READ, {"id": export_id, "offset": offset})
            offset, eof = chunk["offset"], chunk["eof"]
            yield base64.b64decode(chunk["data_b64"])

    # --- images and kernels -------------------------------------------------------------------------

    def image_list(self) -> list[Image]:
        return self.call(api.IMAGE_LIST).images

    def image_show(self, name: str) -> Image:
        return self.call(api.IMAGE_SHOW, {"name": name})

    def kernel_list(self, available: bool = False) -> api.KernelList:
        return self.call(api.KERNEL_LIST, {"available": available})

    def image_build(self, name: str | None = None, *, force: bool = False, no_cache: bool = False) -> Operation:
        params = {"force": force, "no_cache": no_cache, **({"name": name} if name else {})}
        return self.call(api.IMAGE_BUILD, params).operation

    def image_pull(self, params: api.ImagePull) -> Operation:
        return self.call(api.IMAGE_PULL, params).operation

    def image_export(self, name: str, output: str) -> Operation:
        return self.call(api.IMAGE_EXPORT, {"name": name, "output": output}).operation

    def image_register(self, params: api.ImageRegister) -> Operation:
        return self.call(api.IMAGE_REGISTER, params).operation

    def image_promote(self, name: str) -> Image:
        return self.call(api.IMAGE_PROMOTE, {"name": name})

    def image_delete(self, name: str) -> None:
        self.call_raw(api.IMAGE_DELETE, {"name": name})

    def image_cache_prune(self, dry_run: bool = False) -> api.CachePruneResult:
        return self.call(api.IMAGE_CACHE_PRUNE, {"dry_run": dry_run})

    def kernel_show(self, name: str) -> Kernel:
        return self.call(api.KERNEL_SHOW, {"name": name})

    def kernel_pull(self, name: str, *, force: bool = False) -> Operation:
        return self.call(api.KERNEL_PULL, {"name": name, "force": force}).operation

    def kernel_rm(self, name: str) -> None:
        self.call_raw(api.KERNEL_RM, {"name": name})

    def kernel_import(self, name: str, vmlinux: str, initrd: str | None = None) -> Kernel:
        return self.call(api.KERNEL_IMPORT, {"name": name, "vmlinux": vmlinux,
                                             **({"initrd": initrd} if initrd else {})})


def _trusted(daemon_uid: int | None) -> set[int]:
    return {os.geteuid(), 0} | ({daemon_uid} if daemon_uid is not None else set())


def check_runtime_dir(path: Path, daemon_uid: int | None = None) -> bool:
    """Whether ``path`` exists (False: no daemon yet); PermissionDenied unless it is a real directory owned
    by the caller or root that no one else may enter (someone who can write there can stand in a socket)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    fix = f"remove it (`rm -rf {path}`) and run the command again: banger recreates it with mode 0700"
    if stat.S_ISLNK(st.st_mode):
        raise PermissionDenied(f"banger's runtime directory {path} is a symlink; "
                               "bangerd's socket must live in a real directory", hint=fix)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"banger's runtime directory {path} is not a directory", hint=fix)
    if st.st_uid not in _trusted(daemon_uid):
        raise PermissionDenied(f"banger's runtime directory {path} belongs to uid {st.st_uid}, not to you "
                               f"(uid {os.geteuid()}) or root; another user may be posing as bangerd",
                               hint=f"if you did not make it, {fix}; or set XDG_RUNTIME_DIR to a directory of yours")
    if st.st_mode & 0o077:
        raise PermissionDenied(f"banger's runtime directory {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                               "it must be 0700 (only you may enter it)", hint=f"`chmod 700 {path}`, then retry")
    return True


def check_peer(sock: socket.socket, path: Path, daemon_uid: int | None = None) -> None:
    """PermissionDenied unless the process listening on ``sock`` runs as the caller or root."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in _trusted(daemon_uid):
        raise PermissionDenied(f"the process serving {path} (pid {pid}) runs as uid {uid}, not as you "
                               f"(uid {os.geteuid()}) or root: it is not your bangerd; nothing was sent to it",
                               hint=f"find out who started pid {pid}; stop it and remove {path}, then retry")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: Any, lines: int = 3) -> str:
    try:
        return " | ".join(open(path, errors="replace").read().strip().splitlines()[-lines:])
    except OSError:
        return ""
