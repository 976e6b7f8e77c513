"""banger-agent, the guest side of the daemon's fast channel: its source, how it is built, where it lives.

The agent is C linked statically (``files/banger-agent.c``) so that it needs nothing from the image it runs
in. The golden build compiles it inside the image's own tree (which has build-essential), so the host needs
no compiler; the binary is also kept beside the cached build for images that have none (OCI imports).
"""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).parent / "files" / "banger-agent.c"
GUEST_BINARY = "usr/local/sbin/banger-agent"
GUEST_SOURCE = "usr/local/src/banger-agent.c"
UNIT = "banger-agent.service"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")


def compile_argv(source: Path | str, output: Path | str, cc: str = "gcc") -> list[str]:
    """The compiler command line that builds the agent (the same in the image's tree and in tests)."""
    return [cc, *CFLAGS, "-o", str(output), str(source)]
