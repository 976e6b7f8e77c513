"""The Python SDK: ``from banger import Client`` — sandboxes driven from code, with typed results.

::

    from banger import Client

    with Client.connect() as bg:
        vm = bg.create(name="try-1").vm                     # a fresh VM (a clone when a template exists)
        bg.workspace_prepare(vm.name, "./app")              # the repo at /root/repo, HEAD = the host's
        result = bg.exec(vm.name, "make test")              # in /root/repo; exit_code, stdout, stderr
        patch = bg.workspace_export(vm.name).patch          # every change in the guest, for `git apply`
        bg.delete(vm.name)

Every method is one or a few daemon calls (``banger.client``, through the declarations in ``banger.api``);
results are the wire's models, and failures raise the exception tree in ``banger.errors`` (each with its
``hint``). Long operations take ``progress=``, called with the operation each time it moves (``follow``
yields the same snapshots). Commands run through the guest agent; a VM without one is reached over SSH
with banger's key, like ``banger vm exec``. Calls are synchronous; an asyncio program runs them in a
thread (``asyncio.to_thread``), as ``banger mcp`` does.
"""

from __future__ import annotations

import builtins
import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from banger import api, install, script
from banger import client as connection
from banger.bounds import RuntimeChoice, WorkspaceMode
from banger.errors import (
    NO_AGENT,
    BangerError,
    GuestError,
    InvalidArgument,
    ProtocolError,
    from_rpc_error,
    invalid_params,
)
from banger.model import VM, Image, Kernel
from banger.wire import (
    ExecStart,
    ImagePull,
    Listener,
    Operation,
    OperationResult,
    VMCreate,
    VMCreated,
    VMOutcome,
    WorkspaceExport,
    WorkspacePrepare,
    WorkspacePrepareResult,
)
from banger.workspace import plan

Progress = Callable[[Operation], None]
Output = Callable[[str, bytes], None]  # ("stdout" | "stderr", bytes) as the guest writes them
DEFAULT_OUTPUT_CAP = 1 << 20  # bytes of each stream kept in an ExecResult


@dataclass
class ExecResult:
    """How a command in a guest ended, and what it wrote (each stream capped at ``max_output`` bytes)."""

    exit_code: int  # 128 + N when killed by signal N
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass
class RunResult(ExecResult):
    """``Client.run``: the command's outcome plus the VM it ran in (deleted afterwards unless ``keep``)."""

    vm: str = ""  # the VM's name, e.g. "brave-otter"
    kept: bool = False
    workspace: WorkspacePrepareResult | None = None  # what was prepared, when a path was given


@dataclass
class Export:
    """A workspace's changes: the patch, the paths it touches and the commit it is against."""

    patch: bytes  # for `git apply` (binary changes in git's binary format)
    changed_paths: list[str]  # e.g. ["README.md", "new file.bin"]
    base_commit: str  # 40 hex


def prepare_request(ref: str | None, path: str | Path, **opts: Any) -> WorkspacePrepare:
    """The prepare params for ``path`` resolved on this host (``None`` options are left to the daemon)."""
    with _invalid("workspace prepare"):
        return WorkspacePrepare(ref=ref, path=str(Path(path).expanduser().resolve()),
                                **{k: v for k, v in opts.items() if v is not None})


@contextlib.contextmanager
def _invalid(what: str) -> Iterator[None]:
    """A value the wire's models refuse, as banger's InvalidArgument naming the field (not pydantic's error)."""
    try:
        yield
    except ValidationError as exc:
        raise invalid_params(what, exc) from None


def _shell(command: str | Sequence[str]) -> str:
    shell = command if isinstance(command, str) else script.shell_command(list(command))
    if not shell.strip():
        raise InvalidArgument("no command given", hint="pass a shell command line, e.g. 'make test'")
    return shell


class _Capture:
    """Keeps the first ``cap`` bytes of each stream and whether more came."""

    def __init__(self, cap: int, also: Output | None):
        self.cap, self.also = cap, also
        self.data = {"stdout": bytearray(), "stderr": bytearray()}
        self.cut = {"stdout": False, "stderr": False}

    def __call__(self, stream: str, chunk: bytes) -> None:
        kept = self.data[stream]
        room = self.cap - len(kept)
        kept += chunk[:max(0, room)]
        self.cut[stream] |= len(chunk) > room
        if self.also is not None:
            self.also(stream, chunk)

    def result(self, status: int) -> ExecResult:
        return ExecResult(status, bytes(self.data["stdout"]), bytes(self.data["stderr"]),
                          self.cut["stdout"], self.cut["stderr"])


class Client:
    """A connection to the caller's bangerd (started on first use, like the CLI does)."""

    def __init__(self, conn: connection.Client):
        self.conn = conn

    @classmethod
    def connect(cls, *, autostart: bool = True) -> Client:
        """The daemon the ``banger`` CLI would use here (``BANGER_HOME``, a system install, or the caller's)."""
        target = install.client_target()
        system = target.system

        def check_config() -> None:
            from banger import config

            config.load(target.layout.config_file)

        return cls(connection.Client.connect(target.layout, autostart=autostart and system is None,
                                             daemon_uid=system.owner_uid if system else None,
                                             before_start=check_config))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations ---------------------------------------------------------------------------------

    def follow(self, op: Operation, poll: float = 0.5) -> Iterator[Operation]:
        """``op`` as it moves (a new stage, progress), up to and including its end."""
        yield op
        while op.state == "running":
            op = self.conn.operation_wait(op.id, timeout=poll)
            yield op

    def wait(self, op: Operation, progress: Progress | None = None) -> OperationResult:
        """Follow ``op`` to its end; its result, or its error raised. If following it fails (Ctrl-C, a lost
        connection, ``progress`` raising), the operation is cancelled, so nothing it made is left behind."""
        started = op
        try:
            for op in self.follow(started):  # noqa: B007  (the last snapshot is the one that counts)
                if progress is not None:
                    progress(op)
        except BaseException:
            with contextlib.suppress(BangerError, OSError), self.conn.another() as fresh:
                fresh.operation_cancel(started.id)  # a fresh connection: this one may hold half a reply
            raise
        if op.state != "succeeded" or op.result is None:
            raise from_rpc_error(op.error or {"message": f"{op.kind} {op.target} {op.state}"})
        return op.result

    def cancel(self, op: Operation) -> Operation:
        """Cancel ``op``; the daemon's undo stack removes whatever it had made."""
        return self.conn.operation_cancel(op.id)

    # --- VMs ----------------------------------------------------------------------------------------

    def create(self, *, name: str | None = None, image: str | None = None, kernel: str | None = None,
               runtime: RuntimeChoice | None = None, vcpu: int | None = None, memory_mib: int | None = None,
               disk_size: str | None = None, nat: bool = False, cold: bool = False, start: bool = True,
               workspace: str | Path | None = None, mode: WorkspaceMode | None = None,
               include_untracked: bool = False, branch: str | None = None, from_ref: str | None = None,
               no_bootstrap: bool = False, progress: Progress | None = None) -> VMCreated:
        """A new VM, running unless ``start=False`` (the options of ``banger vm create``). With ``workspace``
        (a path in a git repository) the repo is in the guest too when this returns, built into a clone as
        a disk or else prepared over SSH, with ``mode``, ``include_untracked``, ``branch``, ``from_ref`` and
        ``no_bootstrap`` as ``workspace_prepare`` takes them; the VM is deleted again if that fails."""
        if workspace is not None and not start:
            raise InvalidArgument("a workspace goes into a running VM", hint="leave start=True, or prepare later")
        ws = prepare_request(None, workspace, mode=mode, include_untracked=include_untracked, branch=branch,
                             from_ref=from_ref, no_bootstrap=no_bootstrap) if workspace is not None else None
        if ws is not None:  # a repo prepare would refuse fails here, before any VM exists
            dry = self.conn.vm_workspace_prepare(ws.model_copy(update={"dry_run": True}))
            plan.check_bootstrap_network(dry.host_root or ws.path, {f.path for f in dry.files if "/" not in f.path},
                                         nat=nat, no_bootstrap=ws.no_bootstrap)
        with _invalid("create"):
            req = VMCreate(name=name, image=image, kernel=kernel, runtime=runtime, vcpu=vcpu, memory_mib=memory_mib,
                           disk_size=disk_size, nat=nat, cold=cold, start=start, workspace=ws)
        created = self._created(self.wait(self.conn.vm_create(req), progress))
        if ws is not None and created.workspace is None:
            try:
                prepared = self.conn.vm_workspace_prepare(ws.model_copy(update={"ref": created.vm.name}))
            except BaseException:
                self.delete(created.vm.name)
                raise
            created = created.model_copy(update={"workspace": prepared})
        return created

    def run(self, command: str | Sequence[str], *, path: str | Path | None = None, keep: bool = False,
            env: dict[str, str] | None = None, stdin: bytes | None = None, output: Output | None = None,
            max_output: int = DEFAULT_OUTPUT_CAP, progress: Progress | None = None, **create_opts: Any) -> RunResult:
        """``banger vm run [PATH] -- COMMAND``: a fresh VM, the repo at ``path`` in /root/repo (when given),
        ``command`` run there; the VM is deleted afterwards unless ``keep``. ``create_opts``: the keyword
        options of :meth:`create`."""
        _shell(command)  # an empty command is refused before a VM exists
        created = self.create(workspace=path, progress=progress, **create_opts)
        name = created.vm.name
        try:
            # Through mise only with a repository (its config is what mise would apply; mise's start costs
            # ~0.2 s under TCG, a third of a clone's whole run).
            done = self.exec(name, command, env=env, stdin=stdin, output=output, max_output=max_output,
                             tools=path is not None)
        except BaseException:
            if not keep:
                with contextlib.suppress(BangerError, OSError):  # the command's error is the one to see
                    self.delete(name)
            raise
        if not keep:
            self.delete(name)
        return RunResult(**vars(done), vm=name, kept=keep, workspace=created.workspace)

    def exec(self, ref: str, command: str | Sequence[str], *, workdir: str | None = None,
             env: dict[str, str] | None = None, stdin: bytes | None = None, output: Output | None = None,
             max_output: int = DEFAULT_OUTPUT_CAP, tools: bool = True) -> ExecResult:
        """Run ``command`` (a shell string, or argv) in VM ``ref``, in ``workdir`` or its workspace directory;
        ``output`` sees the streams as they come. With ``tools`` (like ``banger vm exec``) it runs through
        ``mise exec`` when the guest has mise, so the repository's tool versions apply."""
        shell = _shell(command)
        if tools:
            shell = plan.tools_command(shell, install=self.conn.vm_show(ref).spec.nat)
        capture = _Capture(max_output, output)
        info = self.conn.vm_connect(ref, wait_ssh=False)
        where = plan.exec_dir(workdir) if workdir else info.workdir  # relative: under /root, like --guest-path
        with _invalid("exec"):
            req = ExecStart(ref=info.name, command=shell, workdir=where, env=env or {})
        try:
            exec_id = self.conn.vm_exec_start(req)
        except GuestError as exc:
            if exc.data.get("reason") != NO_AGENT:
                raise
            return self._exec_over_ssh(ref, shell, where, env or {}, stdin, capture)
        feeder = self._feed(exec_id, stdin)
        try:
            return capture.result(self.conn.vm_exec_drain(exec_id, capture))
        finally:
            if feeder is not None:
                feeder.join(timeout=0.1)  # a daemon thread: it ends with the command

    def _feed(self, exec_id: str, stdin: bytes | None) -> threading.Thread | None:
        """Close the command's stdin, after feeding ``stdin`` from a thread on a second connection while
        this one reads the output (written first, a big input could stall against unread output)."""
        if not stdin:
            self.conn.vm_exec_write(exec_id, eof=True)
            return None
        return self.conn.vm_exec_feed(exec_id, (stdin[at:at + (1 << 20)] for at in range(0, len(stdin), 1 << 20)))

    def _exec_over_ssh(self, ref: str, shell: str, workdir: str | None, env: dict[str, str], stdin: bytes | None,
                       capture: _Capture) -> ExecResult:
        """A VM without the agent (an image that lacks it): the system ssh, with banger's key."""
        from banger.guest import ssh

        info = self.conn.vm_connect(ref)  # waits for sshd
        exports = " ".join(script.fill("export {}={};", k, v) for k, v in env.items())
        remote = f"{exports} {script.fill('cd {} &&', workdir) if workdir else ''} {shell}".strip()
        argv = ssh.ssh_argv(info.ip, key_path=Path(info.key_path), known_hosts=Path(info.known_hosts),
                            command=[remote], tty=False)
        done = subprocess.run(argv, input=stdin or b"", capture_output=True)
        capture("stdout", done.stdout)
        capture("stderr", done.stderr)
        return capture.result(done.returncode)

    def list(self) -> builtins.list[VM]:
        return self.conn.vm_list()

    def show(self, ref: str) -> VM:
        return self.conn.vm_show(ref)

    def start(self, ref: str) -> VM:
        return self._one(api.VM_START, ref)

    def stop(self, ref: str) -> VM:
        return self._one(api.VM_STOP, ref)

    def restart(self, ref: str) -> VM:
        return self._one(api.VM_RESTART, ref)

    def kill(self, ref: str) -> VM:
        return self._one(api.VM_KILL, ref)

    def delete(self, ref: str) -> VM:
        """Delete VM ``ref`` and everything it holds; the VM as it was just before."""
        return self._one(api.VM_DELETE, ref)

    def act(self, action: api.Rpc[api.VMRefs, api.FanOutResult], refs: Sequence[str]) -> builtins.list[VMOutcome]:
        """``action`` (api.VM_START, VM_STOP, VM_RESTART, VM_KILL, VM_DELETE) on several VMs at once; one
        outcome per ref, failures included rather than raised."""
        return self.conn.vm_action(action, list(refs))

    def _one(self, action: api.Rpc[api.VMRefs, api.FanOutResult], ref: str) -> VM:
        outcome = self.act(action, [ref])[0]
        if not outcome.ok or outcome.vm is None:
            raise from_rpc_error(outcome.error or {"message": f"{action.name} {ref} failed"})
        return outcome.vm

    def ssh_info(self, ref: str) -> api.VMConnectInfo:
        """Address, key and known_hosts to reach VM ``ref`` with any ssh client (waits for its sshd)."""
        return self.conn.vm_connect(ref)

    def logs(self, ref: str) -> str:
        """VM ``ref``'s serial console so far (as the guest wrote it, escape sequences included)."""
        text, offset = [], 0
        while True:
            chunk = self.conn.vm_logs(ref, offset)
            text.append(chunk.data)
            if not chunk.data:
                return "".join(text)
            offset = chunk.offset

    def ports(self, ref: str) -> builtins.list[Listener]:
        """Listening sockets in VM ``ref``, each with the ``<name>.vm:port`` endpoint the host reaches."""
        found = self.conn.vm_ports([ref])[0]
        if not found.ok:
            raise from_rpc_error(found.error or {"message": f"ports of {ref} failed"})
        return found.listeners

    # --- workspaces ---------------------------------------------------------------------------------

    def workspace_prepare(self, ref: str, path: str | Path, **opts: Any) -> WorkspacePrepareResult:
        """Copy the git repository at ``path`` into VM ``ref`` (default /root/repo) with HEAD equal to the
        host's. ``opts``: mode ("shallow" | "full_copy"), include_untracked, guest_path, branch, from_ref,
        dry_run, no_bootstrap."""
        return self.conn.vm_workspace_prepare(prepare_request(ref, path, **opts))

    def workspace_export(self, ref: str, base_commit: str | None = None) -> Export:
        """Every change in VM ``ref``'s workspace since ``base_commit`` (default: the prepared HEAD) as one
        patch for ``git apply`` (``.patch`` is empty when nothing changed)."""
        result = self.conn.vm_workspace_export(WorkspaceExport(ref=ref, base_commit=base_commit))
        return Export(b"".join(self.conn.export_chunks(result)), result.changed_paths, result.base_commit)

    # --- images and kernels -------------------------------------------------------------------------

    def images(self) -> builtins.list[Image]:
        return self.conn.image_list()

    def image_build(self, name: str | None = None, *, force: bool = False,
                    progress: Progress | None = None) -> Image:
        """Build the golden Debian image (``name`` default: debian-bookworm); cached builds are reused."""
        return self._image(self.wait(self.conn.image_build(name, force=force), progress))

    def image_pull(self, source: str, *, name: str | None = None, sha256: str | None = None, force: bool = False,
                   progress: Progress | None = None) -> Image:
        """An image from a bundle (URL or .tar.zst path) or an OCI registry (``REGISTRY/REPO:TAG``)."""
        req = ImagePull(source=source, name=name, sha256=sha256, force=force)
        return self._image(self.wait(self.conn.image_pull(req), progress))

    def kernels(self) -> builtins.list[Kernel]:
        return self.conn.kernel_list().kernels

    def kernel_pull(self, name: str, *, force: bool = False, progress: Progress | None = None) -> Kernel:
        result = self.wait(self.conn.kernel_pull(name, force=force), progress)
        if not isinstance(result, api.KernelInstalled):
            raise _unexpected(api.KERNEL_PULL.name, result)
        return result.kernel

    @staticmethod
    def _image(result: OperationResult) -> Image:
        if not isinstance(result, api.ImageInstalled):
            raise _unexpected("an image operation", result)
        return result.image

    @staticmethod
    def _created(result: OperationResult) -> VMCreated:
        if not isinstance(result, VMCreated):
            raise _unexpected(api.VM_CREATE.name, result)
        return result


def _unexpected(what: str, result: object) -> BangerError:
    return ProtocolError(f"{what} ended with an unexpected result: {type(result).__name__}")

