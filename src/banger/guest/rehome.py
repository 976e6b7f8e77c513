"""Re-homing a clone: what makes a guest restored from a snapshot template its own machine.

A clone wakes up as an exact copy of its template: the template's MAC, address, hostname, machine-id,
SSH host key, a clock that stopped when the snapshot was taken and an RNG state every other clone shares.
:func:`rehome` fixes each through the guest agent before anything else reaches the guest; until it
has run, the clone's TAP filter (which passes only the clone's own MAC and address) drops every frame
it sends, so a clone is never on the bridge under another VM's identity.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from dataclasses import dataclass

from banger.errors import GuestError
from banger.guest.agent import AgentLink
from banger.script import Script

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
# Where distributions install OpenSSH 9.8's per-connection binary (Debian/Ubuntu, Fedora, Arch/Alpine).
SSHD_SESSION = ("/usr/lib/openssh/sshd-session", "/usr/libexec/sshd-session", "/usr/lib/ssh/sshd-session")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class Identity:
    """Who the clone becomes."""

    name: str
    mac: str
    ip: str
    prefixlen: int
    gateway: str
    host_key_public: str  # the daemon made and pinned this key; the private half goes in over stdin

    def __post_init__(self) -> None:
        # MAC and addresses go into `ip -batch` lines, where a newline would be another command.
        if not MAC.fullmatch(self.mac):
            raise ValueError(f"not a MAC address: {self.mac!r}")
        ipaddress.IPv4Address(self.ip)
        ipaddress.IPv4Address(self.gateway)
        if not 0 < self.prefixlen <= 32:
            raise ValueError(f"not a prefix length: {self.prefixlen}")


def rehome_script(identity: Identity, machine_id: str) -> str:
    """The guest shell script that takes on ``identity`` (the private host key is its stdin).

    Under emulation every process costs tens of milliseconds, so it is one ``sh`` using builtins and one
    ``ip -batch``; sshd's new key is written first, so a listener that must re-exec to load it (OpenSSH
    9.8 and later) does so while the rest runs.
    """
    key, pub = HOST_KEY, HOST_KEY + ".pub"
    s = Script()
    s.raw("umask 077")
    s.line("while IFS= read -r line; do printf '%s\\n' \"$line\"; done > {}", key)
    # Up to OpenSSH 9.7 every connection's re-executed sshd reads the host key files itself, so the new
    # key is served at once and the listener is left alone: re-executing it was the largest part of
    # what a clone translates and touches after restore (16 MiB of TCG code, 9 MiB of guest pages, in
    # every idle clone). From 9.8 the listener loads the keys and hands them to sshd-session: there
    # SIGHUP makes it re-exec with the new one.
    s.line("for b in {} {} {}; do if [ -e \"$b\" ] && [ -s /run/sshd.pid ]; then read -r pid < /run/sshd.pid && "
           "kill -HUP \"$pid\"; break; fi; done", *SSHD_SESSION)
    s.raw("umask 022")
    s.line("printf '%s\\n' {} > {}", identity.host_key_public, pub)
    # A new MAC first: virtio-net applies it through its control queue, so QEMU filters on it too.
    s.line("printf '%s\\n' {} {} {} {} {} | ip -batch -",
           f"link set dev eth0 address {identity.mac}", "addr flush dev eth0 scope global",
           f"addr add {identity.ip}/{identity.prefixlen} dev eth0",
           f"route replace default via {identity.gateway} dev eth0 onlink", "neigh flush dev eth0")
    s.line("printf '%s' {} > /proc/sys/kernel/hostname", identity.name)
    s.line("printf '%s\\n' {} > /etc/hostname", identity.name)
    s.line("printf '%s\\n' {} > /etc/machine-id", machine_id)
    s.raw("kept=''")
    s.raw("while IFS= read -r line; do case \"$line\" in 127.0.1.1[[:space:]]*) ;; "
          "*) kept=\"$kept$line\n\" ;; esac; done < /etc/hosts")
    s.line("printf '%s127.0.1.1\\t%s\\n' \"$kept\" {} > /etc/hosts", identity.name)
    return s.render()


async def rehome(link: AgentLink, identity: Identity, host_key_private: bytes) -> float:
    """Give the guest behind ``link`` its own identity; the seconds it took."""
    started = time.monotonic()
    await link.set_time()
    await link.reseed()
    result = await link.exec(["/bin/sh", "-c", rehome_script(identity, uuid.uuid4().hex)],
                             stdin=host_key_private, timeout=30)
    if result.status != 0:
        raise GuestError(f"re-homing the clone {identity.name!r} failed (status {result.status}): "
                         f"{result.stderr.decode(errors='replace')[-300:]}")
    return time.monotonic() - started
