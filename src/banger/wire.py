"""The wire's models: the params and result of every RPC that ``banger.api`` declares.

Fields are snake_case; each carries a comment with an example value. The daemon (which validates), the
client's typed calls, the SDK, ``banger mcp`` and the CLI commands that render results import this
module; it pulls in pydantic, which the CLI's simple commands never load (``--json`` listings pass the
daemon's JSON through).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from banger import bounds
from banger.bounds import RuntimeChoice, WorkspaceMode
from banger.kernels.catalog import CatalogEntry
from banger.model import VM, Image, Kernel, OperationState, Workspace, now


class Params(BaseModel):
    """Base for request params: unknown fields are refused so typos fail loudly."""

    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Empty(Params):
    pass


class Ok(Result):
    ok: bool = True


class ErrorData(Result):
    """What a banger error carries besides its message (``errors.to_rpc_error``)."""

    model_config = ConfigDict(extra="allow")  # an error class's own fields pass through, e.g. {"key": ...}

    type: str = ""  # the exception class, e.g. "GuestError"
    hint: str | None = None  # what to do next, e.g. "`banger vm start dev`"
    reason: str | None = None  # a machine-readable cause, e.g. "no-agent"


class ErrorInfo(Result):
    """A JSON-RPC error object: how a failure crosses the wire (and is raised again by the client)."""

    code: int  # e.g. -32004
    message: str  # e.g. "no VM named 'dev'"
    data: ErrorData = Field(default_factory=ErrorData)


# --- daemon -------------------------------------------------------------------------------------------


class PingResult(Result):
    version: str  # e.g. "0.1.0"
    pid: int  # e.g. 4242
    started_at: datetime
    socket: str  # e.g. "/run/banger/bangerd.sock"
    state_dir: str  # e.g. "/var/lib/banger"


class DaemonStatus(PingResult):
    vms: dict[str, int] = Field(default_factory=dict)  # state -> count, e.g. {"running": 2}
    images: int = 0
    kernels: int = 0
    operations_running: int = 0
    schema_version: int = 0
    dns: str = ""  # e.g. "serving 127.0.0.1:42069" or why not


class OperationRef(Params):
    id: str  # e.g. "op-5d1c9e"


class OperationWait(Params):
    id: str
    timeout: float = Field(10.0, ge=0, le=300)  # seconds to wait for the operation to end


class OperationList(Result):
    operations: list[Operation]


# --- VMs ----------------------------------------------------------------------------------------------


class VMRef(Params):
    ref: str  # VM name or id, e.g. "dev"


class VMRefs(Params):
    refs: list[str] = Field(min_length=1)  # e.g. ["dev", "ci-1"]


class VMConnect(Params):
    ref: str  # VM name or id
    wait_ssh: bool = True  # False: do not wait for a just-cloned VM's sshd (the caller uses the agent)


class VMList(Result):
    vms: list[VM]


class VMCreate(Params):
    name: str | None = None  # e.g. "dev"; generated when omitted
    image: str | None = None  # default: config.default_image_name
    kernel: str | None = None  # default: the image's kernel_ref
    runtime: RuntimeChoice | None = None  # default: config.runtime
    vcpu: int | None = Field(None, ge=bounds.VCPU[0], le=bounds.VCPU[1])  # e.g. 2
    memory_mib: int | None = Field(None, ge=bounds.MEMORY_MIB[0], le=bounds.MEMORY_MIB[1])  # e.g. 2048
    disk_size: str | None = None  # e.g. "16G"
    nat: bool = False
    start: bool = True  # False = create stopped (`--no-start`)
    cold: bool = False  # True = boot from the image even when a snapshot template could be cloned
    # A repository for the new VM, built on the host as its workspace disk when the VM is a clone (the
    # result's "workspace" says so); otherwise the caller prepares it the streaming way once the VM runs.
    workspace: WorkspacePrepare | None = None


class ExecStart(Params):
    ref: str  # VM name or id
    command: str = Field(min_length=1)  # a shell command line, e.g. "make test"
    workdir: str | None = None  # guest directory to run it in, e.g. "/root/repo"
    env: dict[str, str] = Field(default_factory=dict)


class ExecStarted(Result):
    id: str  # e.g. "9f2c4e1a0b3d5c7e"


class ExecRead(Params):
    id: str
    offset: int = Field(0, ge=0)  # events already read
    wait: float = Field(25.0, ge=0, le=60)  # seconds to wait for output or the end


class ExecEvent(Result):
    stream: Literal["stdout", "stderr"]
    data: str  # base64


class ExecOutput(Result):
    events: list[ExecEvent]
    offset: int  # pass back as the next read's offset
    done: bool = False
    status: int | None = None  # exit status (128 + N when killed by signal N), once done
    error: ErrorInfo | None = None  # the agent failed, once done


class ExecWrite(Params):
    id: str
    data: str = ""  # base64; up to a few MiB per call
    eof: bool = False  # close the command's stdin after data


class ExecSignal(Params):
    id: str
    signal: int = Field(ge=1, le=64)  # e.g. 2 (SIGINT)


class TemplateInfo(Result):
    id: str  # the key digest, e.g. "3f9a0c1d2e4b5a69"
    image: str | None = None  # e.g. "debian-bookworm"
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_size: int | None = None  # work disk bytes
    created_at: str | None = None
    build_seconds: float | None = None  # cold boot + settle + snapshot, e.g. 14.2
    allocated_bytes: int = 0  # on disk (memory file, frozen disks, state)
    vms: list[str] = Field(default_factory=list)  # ids of VMs whose disks stand on it
    complete: bool = True


class TemplateList(Result):
    templates: list[TemplateInfo]


class TemplatesPrune(Params):
    all: bool = False  # True: every template no VM stands on; False: only superseded ones


class TemplatesPruned(Result):
    removed: list[str]  # template ids


class VMSet(Params):
    ref: str
    vcpu: int | None = Field(None, ge=bounds.VCPU[0], le=bounds.VCPU[1])
    memory_mib: int | None = Field(None, ge=bounds.MEMORY_MIB[0], le=bounds.MEMORY_MIB[1])
    disk_size: str | None = None  # grow only, VM must be stopped
    nat: bool | None = None


class VMLogs(Params):
    ref: str
    offset: int = Field(0, ge=0)  # byte offset into console.log to read from, e.g. 4096
    max_bytes: int = Field(1 << 20, ge=1, le=16 << 20)


class VMLogsResult(Result):
    data: str  # console text from offset
    offset: int  # next offset


class DiskUsage(Result):
    size: int  # apparent size in bytes, e.g. 8589934592
    allocated: int  # bytes on the host's disk, e.g. 41943040


class VMStats(Result):
    ref: str  # the VM's name, e.g. "dev"
    state: str  # e.g. "running"
    disks: dict[str, DiskUsage] = Field(default_factory=dict)  # file name -> usage, e.g. {"root.qcow2": ...}
    pid: int | None = None  # the VMM process, while running
    cpu_seconds: float | None = None  # the VMM's user + system CPU time, e.g. 12.5
    rss_bytes: int | None = None  # the VMM's resident memory, e.g. 301989888
    tap: str | None = None  # e.g. "bgr3f9c0a1b"


class VMOutcome(Result):
    """What one VM of a multi-VM command came to."""

    ref: str  # as given, e.g. "dev"
    ok: bool
    vm: VM | None = None  # the VM after the action (for delete: as it was just before), when ok
    error: ErrorInfo | None = None  # why not, when not ok


class FanOutResult(Result):
    """Per-VM outcome of a command that took several refs, in the order given."""

    results: list[VMOutcome]


class VMConnectInfo(Result):
    """How the CLI reaches a running VM with the system ssh (also marks the VM as used)."""

    name: str  # e.g. "dev"
    ip: str  # e.g. "172.30.0.2"
    key_path: str  # banger's private key, e.g. "/var/lib/banger/ssh/id_ed25519"
    known_hosts: str  # banger's known_hosts, e.g. "/var/lib/banger/ssh/known_hosts"
    workdir: str | None = None  # the recorded workspace's guest path, e.g. "/root/repo"


class Listener(Result):
    """A listening socket in the guest."""

    proto: str  # "tcp" | "udp"
    address: str  # e.g. "0.0.0.0" or "127.0.0.1"
    port: int  # e.g. 8080
    process: str = ""  # e.g. "python3"
    endpoint: str = ""  # how the host reaches it, e.g. "dev.vm:8080"

    @property
    def guest_only(self) -> bool:
        """Bound to the guest's loopback: nothing outside the guest reaches it."""
        return self.address.startswith("127.") or self.address == "::1"


class VMPorts(Result):
    ref: str
    ok: bool = True
    listeners: list[Listener] = Field(default_factory=list)
    error: ErrorInfo | None = None


class VMPortsResult(Result):
    vms: list[VMPorts]


# --- workspaces ---------------------------------------------------------------------------------------


class WorkspacePrepare(Params):
    ref: str | None = None  # VM name or id, e.g. "dev"; only a dry run may omit it (it checks the repo)
    path: str  # absolute host path in the repository, e.g. "/home/me/src/app"
    mode: WorkspaceMode = "shallow"  # shallow: HEAD's commit only; full_copy: all of .git
    include_untracked: bool = False  # also ship untracked files that are not ignored
    guest_path: str | None = None  # default "/root/repo"; must stay under /root
    branch: str | None = None  # guest-only branch to create and check out, e.g. "agent/try-1"
    from_ref: str | None = None  # start that branch at this commit instead of HEAD, e.g. "v1.2"
    dry_run: bool = False  # list what would be shipped; the VM is not touched
    no_bootstrap: bool = False  # skip the background `mise install`


class ShippedFile(Result):
    path: str  # relative to the repository root, e.g. "src/main.py"
    size: int  # bytes


class WorkspacePrepareResult(Result):
    workspace: Workspace | None = None  # the recorded workspace (None in a dry run)
    dry_run: bool = False
    files: list[ShippedFile] = Field(default_factory=list)  # dry run only: every work-tree path shipped
    file_count: int = 0  # work-tree paths shipped, e.g. 212
    file_bytes: int = 0  # their total size
    history_bytes: int = 0  # dry run: size of the git objects that would go along (estimate)
    bytes_sent: int = 0  # size of the tar stream actually sent (files + .git)
    seconds: float = 0.0  # wall time of the prepare
    head_commit: str | None = None  # dry run: the commit the guest HEAD would equal
    host_root: str | None = None  # dry run: the repository's top level, e.g. "/home/me/src/app"
    notes: list[str] = Field(default_factory=list)  # one-line notes, e.g. why tool bootstrap was skipped


class WorkspaceExport(Params):
    ref: str  # VM name or id
    base_commit: str | None = None  # diff against this; default: the workspace's recorded head commit


class WorkspaceExportResult(Result):
    base_ref: str  # the base as given or recorded, e.g. "HEAD~2" or a 40-hex commit
    base_commit: str  # what it resolved to in the guest (40 hex)
    changed_paths: list[str]  # every path the patch touches, e.g. ["README.md", "new file.bin"]
    patch_bytes: int  # size of the patch
    patch_b64: str | None = None  # the patch, base64, when it is at most 8 MiB
    export_id: str | None = None  # otherwise read it over the socket with vm.workspace.export.read, e.g. "x-1a2b"


class ExportRead(Params):
    id: str = Field(pattern=r"^x-[0-9a-f]{16}$")  # the export_id of a vm.workspace.export result
    offset: int = Field(0, ge=0)  # bytes of the patch already read


class ExportChunk(Result):
    data_b64: str  # the next bytes of the patch (at most 4 MiB before base64)
    offset: int  # where the next read starts
    eof: bool  # True with the last chunk; the daemon has then removed its copy


# --- operations ---------------------------------------------------------------------------------------


class VMCreated(Result):
    kind: Literal["vm_created"] = "vm_created"
    vm: VM
    runtime_note: str = ""  # how the VMM was chosen, e.g. "runtime qemu (tcg): /dev/kvm is missing"
    template: str | None = None  # the snapshot template the VM was cloned from, e.g. "3f9a0c1d2e4b5a69"
    workspace: WorkspacePrepareResult | None = None  # the repo built into it as a disk (clones with a workspace)


class TemplateBuilt(Result):
    kind: Literal["template_built"] = "template_built"
    template: str  # e.g. "3f9a0c1d2e4b5a69"
    build_seconds: float | None = None  # None when it existed already


class ImageInstalled(Result):
    kind: Literal["image_installed"] = "image_installed"
    image: Image


class ImageExported(Result):
    kind: Literal["image_exported"] = "image_exported"
    path: str  # the bundle written, e.g. "/home/me/debian-bookworm.tar.zst"
    sha256: str
    size: int  # bytes


class KernelInstalled(Result):
    kind: Literal["kernel_installed"] = "kernel_installed"
    kernel: Kernel


OperationResult = Annotated[VMCreated | TemplateBuilt | ImageInstalled | ImageExported | KernelInstalled,
                            Field(discriminator="kind")]


class Operation(Result):
    """A long-running daemon operation the client follows (create, build, pull); kept in memory only."""

    id: str  # e.g. "op-5d1c9e"
    kind: str  # e.g. "vm.create", "image.build", "kernel.pull"
    target: str  # e.g. the VM or image name
    state: OperationState = "running"
    stage: str = ""  # current stage, e.g. "preparing disks"
    stages: list[str] = Field(default_factory=list)  # stages seen so far, in order
    timings: dict[str, float] = Field(default_factory=dict)  # seconds spent per finished stage
    done: int = 0  # progress in the current stage (bytes or units)
    total: int | None = None
    log: list[str] = Field(default_factory=list)  # everything the work reported, for `daemon operations`
    notes: list[str] = Field(default_factory=list)  # the lines meant for the user (runtime chosen, warnings)
    error: ErrorInfo | None = None  # when failed or cancelled
    result: OperationResult | None = None  # when succeeded
    started_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None


class OperationStarted(Result):
    operation: Operation


# --- images -------------------------------------------------------------------------------------------


class ImageList(Result):
    images: list[Image]


class ImageRef(Params):
    name: str  # e.g. "debian-bookworm"


class ImageBuild(Params):
    name: str = "debian-bookworm"
    force: bool = False  # rebuild even if the image exists
    no_cache: bool = False  # run mmdebstrap again even when a cached build has the same inputs


class ImagePull(Params):
    source: str  # catalog name, URL, local .tar.zst path, or REGISTRY/REPO:TAG
    name: str | None = None  # register under this name
    sha256: str | None = None  # expected sha256 of a bundle
    force: bool = False
    insecure: bool = False  # plain HTTP registry


class ImageExport(Params):
    name: str
    output: str  # file or directory path on the daemon's host


class ImageRegister(Params):
    name: str
    rootfs: str  # path to an ext4 file
    kernel_ref: str | None = None
    kernel: str | None = None  # vmlinux path (an imported kernel named after the image is made)
    initrd: str | None = None


class ImagePromote(Params):
    name: str  # make this image the default for new VMs


class CachePrune(Params):
    dry_run: bool = False


class RemovedFile(Result):
    path: str  # e.g. "/var/cache/banger/oci/blobs/sha256/3f9a..."
    size: int  # bytes


class CachePruneResult(Result):
    removed: list[RemovedFile]
    bytes: int


# --- kernels ------------------------------------------------------------------------------------------


class KernelListParams(Params):
    available: bool = False  # also list catalog entries not yet pulled


class KernelList(Result):
    kernels: list[Kernel]
    available: list[CatalogEntry] = Field(default_factory=list)  # catalog entries (with --available)


class KernelRef(Params):
    name: str  # e.g. "debian-6.1"


class KernelPull(Params):
    name: str
    force: bool = False


class KernelImport(Params):
    name: str
    vmlinux: str  # path on the daemon's host
    initrd: str | None = None


# --- doctor -------------------------------------------------------------------------------------------


class Check(Result):
    name: str  # e.g. "qemu"
    status: str  # PASS | WARN | FAIL
    detail: str  # what was found
    fix: str = ""  # how to fix it
    required: bool = True


class DoctorResult(Result):
    checks: list[Check]


VMCreate.model_rebuild()  # its workspace field names a model defined further down
VMCreated.model_rebuild()
OperationList.model_rebuild()
