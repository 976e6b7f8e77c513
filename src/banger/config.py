"""``config.toml``: every key optional, each default documented here, errors naming the key.

Example (all values shown are the defaults)::

    log_level = "info"                 # debug | info | warning | error
    runtime = "auto"                   # auto | firecracker | qemu
    firecracker_bin = "firecracker"    # path or name on PATH
    jailer = "auto"                    # run Firecracker under its jailer: auto | true | false (see below)
    jailer_bin = "jailer"              # path or name on PATH (scripts/setup.sh --firecracker installs it)
    qemu_bin = "qemu-system-x86_64"
    default_image_name = "debian-bookworm"
    default_kernel = "debian-6.1"
    bridge_name = "banger0"
    bridge_ip = "172.30.0.1"
    cidr = "172.30.0.0/24"             # guests get addresses from here
    tap_pool_size = 2                  # idle TAPs kept ready
    snapshots = true                   # QEMU VMs start as clones of a snapshot template (false: cold boots)
    default_dns = "1.1.1.1"            # resolver written into guests
    auto_stop_stale_after = "0"        # e.g. "8h"; 0 disables the stale reaper
    ssh_key_path = ""                  # default: <state>/ssh/id_ed25519
    ssh_ready_timeout = "90s"          # how long a starting VM's sshd may take to answer
    kvm_probe_timeout = "8s"           # how long the Firecracker boot probe may take (nested KVM: ~20s)
    debian_mirror = "http://deb.debian.org/debian"   # kernels, busybox and golden images come from here
    dns_listen = "127.0.0.1:42069"     # the daemon's DNS server for <name>.vm; "" turns it off

    [vm_defaults]
    vcpu = 2
    memory_mib = 1024
    disk_size = "8G"                   # work disk (/root)
    system_overlay_size = "8G"         # copy-on-write room over the image
    kernel_args = ""                   # appended to every guest's kernel command line

    [[file_sync]]                      # copied into every VM's /root at start
    host = "~/.config/gh/hosts.yml"    # under the owner's home
    guest = ".config/gh/hosts.yml"     # under /root
    mode = "0600"

``jailer``: ``true`` jails every Firecracker (chroot under ``<state>-jail``, root's, fresh mount and pid namespaces, the
daemon's own user) and makes a Firecracker launch fail when the jailer cannot be used; ``false`` never jails;
``auto`` jails when ``jailer_bin`` is found and root is at hand (the daemon is root, or bangerd-root serves a
system install), and otherwise runs plain Firecracker, saying why in the runtime note.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from banger.bounds import parse_duration, parse_size
from banger.errors import ConfigError

__all__ = ["Config", "load", "parse_duration", "parse_size"]  # the parsers live in bounds (no pydantic there)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VMDefaults(_Strict):
    vcpu: int = Field(2, ge=1, le=64)
    memory_mib: int = Field(1024, ge=128, le=256 * 1024)
    disk_size: str = "8G"
    system_overlay_size: str = "8G"
    kernel_args: str = Field("", pattern=r"^[A-Za-z0-9_./=:,@+ -]*$")

    @field_validator("disk_size", "system_overlay_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if parse_size(v) < 64 << 20:
            raise ValueError("must be at least 64M")
        return v


class FileSync(_Strict):
    host: str
    guest: str
    mode: str = "0600"

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3}", v):
            raise ValueError("must be an octal mode such as 0600")
        return v


class Config(_Strict):
    """The daemon's and CLI's settings; see the module docstring for every key."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    runtime: Literal["auto", "firecracker", "qemu"] = "auto"
    firecracker_bin: str = "firecracker"
    jailer: Literal["auto"] | bool = "auto"
    jailer_bin: str = "jailer"
    qemu_bin: str = "qemu-system-x86_64"
    default_image_name: str = "debian-bookworm"
    default_kernel: str = "debian-6.1"
    bridge_name: str = Field("banger0", pattern=r"^[a-zA-Z0-9_.-]{1,15}$")
    bridge_ip: str = "172.30.0.1"
    cidr: str = "172.30.0.0/24"
    tap_pool_size: int = Field(2, ge=0, le=64)
    snapshots: bool = True  # start QEMU VMs as clones of snapshot templates (False: always boot cold)
    default_dns: str = "1.1.1.1"
    auto_stop_stale_after: str = "0"
    ssh_key_path: str = ""
    ssh_ready_timeout: str = "90s"
    kvm_probe_timeout: str = "8s"
    dns_listen: str = Field("127.0.0.1:42069", pattern=r"^$|^\d+\.\d+\.\d+\.\d+:\d{1,5}$")
    debian_mirror: str = Field("http://deb.debian.org/debian", pattern=r"^https?://\S+$")
    vm_defaults: VMDefaults = VMDefaults()
    file_sync: list[FileSync] = []

    @field_validator("bridge_ip", "default_dns")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.IPv4Address(v)
        return v

    @field_validator("jailer", mode="before")
    @classmethod
    def _jailer(cls, v: object) -> object:
        if v != "auto" and not isinstance(v, bool):  # no "yes", 1 or "true": TOML has real booleans
            raise ValueError('must be "auto", true or false')
        return v

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        net = ipaddress.IPv4Network(v, strict=True)
        if net.prefixlen > 29:
            raise ValueError("network is too small; use a /29 or larger")
        return v

    @field_validator("auto_stop_stale_after", "ssh_ready_timeout", "kvm_probe_timeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _bridge_in_cidr(self) -> Config:
        if ipaddress.IPv4Address(self.bridge_ip) not in ipaddress.IPv4Network(self.cidr):
            raise ValueError(f"bridge_ip {self.bridge_ip} is not inside cidr {self.cidr}")
        return self

    @property
    def ready_timeout_seconds(self) -> int:
        return parse_duration(self.ssh_ready_timeout)

    @property
    def probe_timeout_seconds(self) -> int:
        return max(1, parse_duration(self.kvm_probe_timeout))

    @property
    def stale_after_seconds(self) -> int:
        return parse_duration(self.auto_stop_stale_after)


def _key_of(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        else:
            parts.append(p)
    return ".".join(parts) or "(file)"


def from_mapping(data: dict[str, object], source: str = "config") -> Config:
    """Validate a parsed TOML mapping; errors name the offending key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _key_of(tuple(first["loc"]))
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(
            f"{source}: key {key!r}: {msg}",
            hint="fix or remove that key; every key is optional and its default is listed in the README",
            data={"key": key},
        ) from exc


def load(path: Path) -> Config:
    """Read ``path`` (missing file = all defaults)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="check the file's syntax") from exc
    return from_mapping(data, str(path))
