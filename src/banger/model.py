"""Records the daemon keeps and the wire carries: VMs, images and kernels (operations: banger.wire)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from banger.bounds import RuntimeChoice, WorkspaceMode

VMState = Literal["created", "running", "stopped", "error"]
Runtime = Literal["firecracker", "qemu"]
OperationState = Literal["running", "succeeded", "failed", "cancelled"]


def now() -> datetime:
    """Timezone-aware UTC now (every timestamp banger stores is UTC)."""
    return datetime.now(UTC)


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VMSpec(Record):
    """What the user asked for; stored as JSON on the VM row."""

    vcpu: int = 2  # e.g. 2
    memory_mib: int = 1024  # e.g. 2048
    disk_size: int = 8 << 30  # work disk bytes, e.g. 8589934592
    system_overlay_size: int = 8 << 30  # copy-on-write room over the image, bytes
    image: str = "debian-bookworm"  # image name
    kernel: str = ""  # kernel name; "" = the image's kernel_ref
    runtime: RuntimeChoice = "auto"  # what was asked for; VM.runtime is what was chosen
    nat: bool = False  # outbound NAT through the host


class Workspace(Record):
    """A repository prepared into the guest (see `banger vm workspace`)."""

    guest_path: str  # e.g. "/root/repo"
    host_path: str  # e.g. "/home/me/src/app"
    head_commit: str  # 40-hex commit the guest HEAD equals
    branch: str | None = None  # guest-only branch, if one was made
    mode: WorkspaceMode = "shallow"
    offline: bool = False  # built on the host as the VM's workspace disk (mounted at guest_path at each start)
    prepared_at: datetime = Field(default_factory=now)


class VM(Record):
    """One sandbox VM as stored in state.db."""

    id: str  # 12-hex id, e.g. "3f9c0a1b2c4d"
    name: str  # e.g. "dev"
    spec: VMSpec
    state: VMState = "created"
    runtime: Runtime | None = None  # chosen at start, e.g. "qemu"
    ip: str | None = None  # e.g. "172.30.0.2"
    mac: str | None = None  # e.g. "06:00:ac:1e:00:02"
    vm_dir: str = ""  # <state>/vms/<id>
    reason: str | None = None  # why the VM is in `error`/`stopped` unexpectedly
    workspace: Workspace | None = None
    creating: bool = False  # true until create finishes; a restarted daemon undoes unfinished creates
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    touched_at: datetime = Field(default_factory=now)  # last use; drives the stale reaper


class Image(Record):
    """A registered image: a rootfs.ext4 plus its work seed and manifest."""

    name: str  # e.g. "debian-bookworm"
    distro: str = ""  # e.g. "debian-12"
    arch: str = "x86_64"
    kernel_ref: str = ""  # kernel to boot it with, e.g. "debian-6.1"
    source: str = ""  # build | bundle | oci | register
    dir: str  # <state>/images/<name>
    rootfs_size: int = 0
    manifest: dict[str, Any] = Field(default_factory=dict)  # manifest.json as on disk (images.manifest reads it)
    created_at: datetime = Field(default_factory=now)

    @property
    def rootfs_sha256(self) -> str:
        """The sha256 the manifest records for rootfs.ext4 ("" for an image registered without one)."""
        return str(self.manifest.get("rootfs_sha256") or "")

    @property
    def extra(self) -> dict[str, Any]:
        """The manifest's ``extra`` facts (boot init, agent, sshd, OCI digests...); empty when it has none."""
        return dict(self.manifest.get("extra") or {})


class Kernel(Record):
    """A local kernel: vmlinux, initrd and (for Debian kernels) a modules disk."""

    name: str  # e.g. "debian-6.1"
    version: str = ""  # e.g. "6.1.0-41-amd64"
    dir: str  # <state>/kernels/<name>
    source: str = ""  # catalog | import
    manifest: dict[str, Any] = Field(default_factory=dict)  # manifest.json as on disk (kernels.manifest reads it)
    created_at: datetime = Field(default_factory=now)

    @property
    def files(self) -> list[str]:
        """The files the manifest lists (vmlinux, initrd.img, modules.ext4, ...), sorted."""
        return sorted(self.manifest.get("files") or {})
