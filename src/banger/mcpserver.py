"""``banger mcp``: an MCP server on stdio, so coding agents drive sandboxes as tools.

Built on the official MCP Python SDK (``mcp`` 2.x, ``MCPServer``), over :mod:`banger.sdk`. Each tool is a
plain function the SDK runs in a worker thread (the SDK calls block), opens its own connection to bangerd
(the low-level client is not shared between threads), returns a model (the SDK publishes its JSON schema
as the tool's output schema and sends it as structured content), and reports the stages of long
operations as MCP progress notifications when the client asked for them. A banger error becomes a tool
error whose text is banger's message and hint; anything else is the SDK's generic tool error (the
traceback goes to stderr: stdout carries only the protocol).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from banger import __version__, bounds
from banger.errors import BangerError
from banger.model import VM
from banger.sdk import Client, ExecResult
from banger.wire import Listener, Operation

OUTPUT_CAP = 64 << 10  # bytes of stdout and of stderr an agent gets back from one command
LOG_TAIL = 16 << 10  # bytes of the serial console vm_logs returns by default
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")

INSTRUCTIONS = """banger runs commands in disposable Linux microVMs (Debian 12, root, 2 vCPUs by default) so you
can build and test a repository without touching the host. For a one-off command use vm_run (it creates a VM,
puts the repository at `path` into /root/repo when given, runs `command` there and deletes the VM). For several
steps, vm_create a VM with a `path`, then vm_exec commands in it, workspace_export to get your changes back as a
git patch for the host, and vm_delete it at the end. VMs have no network access unless created with nat=true."""


class VMSummary(BaseModel):
    name: str  # e.g. "brave-otter"
    state: str  # created | running | stopped | error
    ip: str | None = None
    runtime: str | None = None  # qemu | firecracker
    image: str
    vcpu: int
    memory_mib: int
    workspace: str | None = None  # guest path of the prepared repository, e.g. "/root/repo"

    @classmethod
    def of(cls, vm: VM) -> VMSummary:
        return cls(name=vm.name, state=vm.state, ip=vm.ip, runtime=vm.runtime, image=vm.spec.image,
                   vcpu=vm.spec.vcpu, memory_mib=vm.spec.memory_mib,
                   workspace=vm.workspace.guest_path if vm.workspace else None)


class CommandOutput(BaseModel):
    vm: str  # the VM the command ran in
    exit_code: int  # the command's exit status (128 + N when killed by signal N)
    stdout: str  # UTF-8 (invalid bytes replaced), at most 64 KiB
    stderr: str
    stdout_truncated: bool = False  # more was written than returned
    stderr_truncated: bool = False


class RunOutput(CommandOutput):
    kept: bool = False  # the VM still exists (keep=true); otherwise it was deleted


class VMList(BaseModel):
    vms: list[VMSummary]


class Deleted(BaseModel):
    deleted: str  # the VM's name


class Ports(BaseModel):
    vm: str
    listeners: list[Listener]  # each with the `<name>.vm:port` endpoint the host reaches


class ConsoleLog(BaseModel):
    vm: str
    log: str  # the end of the serial console, escape sequences removed
    truncated: bool  # earlier output was left out


class Prepared(BaseModel):
    vm: str
    guest_path: str  # e.g. "/root/repo"
    head_commit: str  # the guest's HEAD, equal to the host's
    file_count: int
    seconds: float
    notes: list[str] = Field(default_factory=list)


class Patch(BaseModel):
    vm: str
    changed_paths: list[str]  # every path the patch touches
    patch: str  # apply on the host with `git apply` (binary changes are in git's binary format); "" when none
    patch_bytes: int
    patch_base64: str | None = None  # the patch when it is not UTF-8 text (then `patch` is ""): decode, apply


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _command_output(vm: str, done: ExecResult) -> dict[str, Any]:
    return {"vm": vm, "exit_code": done.exit_code, "stdout": _text(done.stdout), "stderr": _text(done.stderr),
            "stdout_truncated": done.stdout_truncated, "stderr_truncated": done.stderr_truncated}


@contextmanager
def _banger(ctx: Context | None) -> Iterator[tuple[Client, Callable[[Operation], None]]]:
    """A connection for one tool call, a progress callback for its operations, and banger's errors as tool
    errors (message and hint, which is what an agent acts on)."""
    step = 0

    def progress(op: Operation) -> None:
        nonlocal step
        if ctx is not None and len(op.stages) > step:
            step = len(op.stages)
            with contextlib.suppress(Exception):  # a client gone mid-call must not abandon the operation
                anyio.from_thread.run(ctx.report_progress, step, None, op.stage)

    try:
        with Client.connect() as bg:
            yield bg, progress
    except BangerError as exc:
        raise ToolError(f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message) from exc
    except ValidationError as exc:  # a value the wire refuses that the tool's own schema let through
        raise ToolError(str(exc).splitlines()[0] + ": " + "; ".join(e["msg"] for e in exc.errors())) from exc


Command = Annotated[str, Field(min_length=1, description="A shell command line run by bash in the guest, "
                                                        "e.g. 'make test'.")]
RepoPath = Annotated[str | None, Field(description="Absolute path of a git repository on this host; its tracked "
                                                    "files and HEAD are put in /root/repo and the command runs there.")]
VMName = Annotated[str, Field(description="The VM's name, as vm_create or vm_list return it.")]
NewName = Annotated[str | None, Field(description="A name for the new VM (lowercase letters, digits, '-'); "
                                                   "one is made up when omitted.")]
Image = Annotated[str | None, Field(description="The image to boot; default: banger's golden Debian 12 image.")]
Nat = Annotated[bool, Field(description="Give the VM outbound network access (needed to install packages or "
                                        "fetch dependencies); off by default.")]
Keep = Annotated[bool, Field(description="Keep the VM after the command (default false: it is deleted).")]
NoBootstrap = Annotated[bool, Field(description="Do not run `mise install` for a repository with a mise config "
                                                "(.mise.toml, .tool-versions); without nat it cannot download.")]
Workdir = Annotated[str | None, Field(description="Guest directory to run in; default: the VM's repository "
                                                   "(/root/repo) or /root.")]


def vm_run(command: Command, path: RepoPath = None, name: NewName = None, image: Image = None, nat: Nat = False,
           keep: Keep = False, no_bootstrap: NoBootstrap = False, ctx: Context | None = None) -> RunOutput:
    """Run one command in a fresh VM and return its exit code, stdout and stderr. With `path`, the repository is
    copied to /root/repo first and the command runs there. The VM is deleted afterwards unless keep=true (then
    use vm_exec and vm_delete with the returned name). nat=true gives the VM outbound network access."""
    with _banger(ctx) as (bg, progress):
        done = bg.run(command, path=path, name=name, image=image, nat=nat, keep=keep, max_output=OUTPUT_CAP,
                      progress=progress, no_bootstrap=no_bootstrap)
        return RunOutput(**_command_output(done.vm, done), kept=done.kept)


def vm_exec(name: VMName, command: Command, workdir: Workdir = None, ctx: Context | None = None) -> CommandOutput:
    """Run a command in an existing VM (in its repository directory, or `workdir`) and return its exit code,
    stdout and stderr."""
    with _banger(ctx) as (bg, _):
        return CommandOutput(**_command_output(name, bg.exec(name, command, workdir=workdir, max_output=OUTPUT_CAP)))


def vm_create(name: NewName = None, path: RepoPath = None, image: Image = None, nat: Nat = False,
              vcpu: Annotated[int | None, Field(ge=bounds.VCPU[0], le=bounds.VCPU[1])] = None,
              memory_mib: Annotated[int | None, Field(ge=bounds.MEMORY_MIB[0], le=bounds.MEMORY_MIB[1])] = None,
              no_bootstrap: NoBootstrap = False, ctx: Context | None = None) -> VMSummary:
    """Create and start a VM that stays until vm_delete; with `path`, the repository is in /root/repo. Returns
    its name for vm_exec, workspace_export and vm_delete."""
    with _banger(ctx) as (bg, progress):
        created = bg.create(name=name, workspace=path, image=image, nat=nat, vcpu=vcpu, memory_mib=memory_mib,
                            progress=progress, no_bootstrap=no_bootstrap)
        return VMSummary.of(bg.show(created.vm.name))


def vm_list() -> VMList:
    """List the VMs that exist, with their state and address."""
    with _banger(None) as (bg, _):
        return VMList(vms=[VMSummary.of(v) for v in bg.list()])


def vm_delete(name: VMName) -> Deleted:
    """Delete a VM and everything in it (export your changes with workspace_export first)."""
    with _banger(None) as (bg, _):
        return Deleted(deleted=bg.delete(name).name)


def vm_ports(name: VMName) -> Ports:
    """The TCP/UDP sockets listening in a VM, each with the host name and port that reach it from the host."""
    with _banger(None) as (bg, _):
        return Ports(vm=name, listeners=bg.ports(name))


def vm_logs(name: VMName, max_bytes: Annotated[int, Field(ge=1, le=1 << 20)] = LOG_TAIL) -> ConsoleLog:
    """The end of a VM's serial console (boot messages, kernel errors), for when a VM misbehaves."""
    with _banger(None) as (bg, _):
        text = _ESCAPES.sub("", bg.logs(name))
        return ConsoleLog(vm=name, log=text[-max_bytes:], truncated=len(text) > max_bytes)


def workspace_prepare(name: VMName, path: Annotated[str, Field(description="Absolute path of a git repository "
                                                                           "on this host.")],
                      include_untracked: Annotated[bool, Field(description="Also copy untracked files that are "
                                                                           "not ignored.")] = False,
                      ctx: Context | None = None) -> Prepared:
    """Copy a host repository into a running VM at /root/repo (tracked files, plus untracked ones when asked),
    with the guest's HEAD equal to the host's, replacing what was there."""
    with _banger(ctx) as (bg, _):
        result = bg.workspace_prepare(name, path, include_untracked=include_untracked)
        ws = result.workspace
        if ws is None:
            raise ToolError(f"the prepare of {path} into {name} recorded no workspace")
        return Prepared(vm=name, guest_path=ws.guest_path, head_commit=ws.head_commit, file_count=result.file_count,
                        seconds=result.seconds, notes=result.notes)


def workspace_export(name: VMName) -> Patch:
    """Every change made in the VM's repository since it was prepared (commits, edits, new and deleted files)
    as one patch; apply it on the host with `git apply`."""
    with _banger(None) as (bg, _):
        exported = bg.workspace_export(name)
        try:
            text, raw = exported.patch.decode("utf-8"), None
        except UnicodeDecodeError:  # a text file in another encoding: a lossy decode would not apply
            text, raw = "", base64.b64encode(exported.patch).decode()
        return Patch(vm=name, changed_paths=exported.changed_paths, patch=text, patch_bytes=len(exported.patch),
                     patch_base64=raw)


READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
TOOLS: list[tuple[Callable[..., BaseModel], ToolAnnotations | None]] = [
    (vm_run, None), (vm_exec, None), (vm_create, None), (vm_list, READ_ONLY), (vm_delete, None),
    (vm_ports, READ_ONLY), (vm_logs, READ_ONLY), (workspace_prepare, None), (workspace_export, READ_ONLY),
]


def build() -> MCPServer:
    server = MCPServer("banger", version=__version__, title="banger sandboxes", instructions=INSTRUCTIONS)
    for tool, hints in TOOLS:
        server.add_tool(tool, annotations=hints)
    return server


def main() -> None:
    """Serve on stdio until the client closes it; logs go to stderr."""
    logging.basicConfig(level=logging.WARNING, format="banger mcp: %(levelname)s %(message)s")
    build().run()
