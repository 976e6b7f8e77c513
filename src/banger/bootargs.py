"""The guest kernel command line banger's initrd and images understand (pure, no I/O).

Disks are fixed by position: ``/dev/vda`` root (copy-on-write view of the image), ``/dev/vdb`` the work
disk mounted at ``/root`` by the image's fstab, ``/dev/vdc`` the kernel's module tree (read-only), which
the initrd mounts at ``/lib/modules/<version>`` so ``modprobe`` works in the guest, and last the per-start
config disk (read-only, labelled ``banger-config``) named by ``banger.config=``.
"""

from __future__ import annotations

import ipaddress
import re

_SAFE = re.compile(r"^[A-Za-z0-9_./=:,@+-]+$")


def kernel_cmdline(*, name: str, ip: str, gateway: str, cidr: str, dns: str, modules_disk: bool,
                   config_disk: str | None = None, init: str | None = None, runtime: str = "qemu",
                   extra: str = "") -> str:
    """Arguments for a VM named ``name`` at ``ip`` on network ``cidr`` behind ``gateway``."""
    netmask = str(ipaddress.IPv4Network(cidr, strict=False).netmask)
    args = [
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "root=/dev/vda",
        "rootfstype=ext4",
        "rw",
        f"ip={ip}::{gateway}:{netmask}:{name}:eth0:off",
        f"systemd.hostname={name}",
        f"banger.dns={dns}",
        "systemd.show_status=1",  # "[  OK  ] Reached target ..." on the console, for `vm logs`
    ]
    if modules_disk:
        args.append("banger.modules=/dev/vdc")
    if config_disk:
        args.append(f"banger.config={config_disk}")
    if init:
        args.append(f"init={init}")
    if runtime == "firecracker":
        # Firecracker ends the VMM on a guest reboot, not on ACPI power-off.
        args.append("banger.halt=reboot")
        args.append("banger.agent=vsock")  # no virtio-serial there: banger-agent listens on vsock
    args += extra.split()
    for a in args:
        if not _SAFE.match(a):
            raise ValueError(f"unsafe kernel argument {a!r}")
    return " ".join(args)
