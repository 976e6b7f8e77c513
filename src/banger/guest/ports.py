"""Listening sockets in a guest, parsed from iproute2's ``ss -H -tulpn`` (installed in the golden image)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# Run in the guest as root (so -p can name every process); -H drops the header line.
SS_COMMAND = "ss -H -tulpn"
_PROCESS_RE = re.compile(r'users:\(\("((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket or bound UDP socket: ``address`` is ``0.0.0.0``, ``::``, ``127.0.0.1``, ..."""

    proto: str  # "tcp" | "udp"
    address: str
    port: int
    process: str  # "" when ss could not tell

    def endpoint(self, vm_name: str) -> str:
        """How the host reaches it: ``<name>.vm:<port>``."""
        return f"{vm_name}.vm:{self.port}"

    @property
    def loopback_only(self) -> bool:
        """True when only the guest itself can connect (bound to 127.0.0.0/8 or ::1)."""
        try:
            return ipaddress.ip_address(self.address.split("%")[0]).is_loopback
        except ValueError:
            return False


def parse_ss(output: str) -> list[Listener]:
    """Listeners in ``ss -H -tulpn`` output, sorted by port then protocol, duplicates removed."""
    found = {listener for line in output.splitlines() if (listener := parse_line(line)) is not None}
    return sorted(found, key=lambda x: (x.port, x.proto, x.address))


def parse_line(line: str) -> Listener | None:
    """One ``ss`` line (``tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=1,fd=3))``), or None."""
    fields = line.split(None, 6)
    if len(fields) < 6 or fields[0] not in ("tcp", "udp"):
        return None
    address, _, port = fields[4].rpartition(":")
    if not port.isdigit():
        return None
    process = ""
    if len(fields) == 7 and (m := _PROCESS_RE.search(fields[6])):
        process = m.group(1)
    return Listener(fields[0], _host(address), int(port), process)


def _host(address: str) -> str:
    """``[::]`` -> ``::``, ``[fe80::1]%eth0`` -> ``fe80::1%eth0``, ``*`` -> ``*``."""
    if address.startswith("["):
        inner, _, scope = address[1:].partition("]")
        return inner + scope
    return address
