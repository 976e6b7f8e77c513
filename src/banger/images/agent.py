"""banger-agent, the guest side of the daemon's fast channel: its source, how it is built, where it lives.

The agent is C linked statically (``files/banger-agent.c``) so that it needs nothing from the image it runs
in. The golden build compiles it inside the image's own tree (which has build-essential), so the host needs
no compiler, and keeps the binary in the image cache (:func:`keep_binary`); an OCI import, which has no
compiler, is given that one, or one the host's gcc builds (:func:`host_binary`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from banger.errors import HostError
from banger.files import write_atomic
from banger.host.run import run
from banger.progress import Reporter

SOURCE = Path(__file__).parent / "files" / "banger-agent.c"
GUEST_BINARY = "usr/local/sbin/banger-agent"
GUEST_SOURCE = "usr/local/src/banger-agent.c"
UNIT = "banger-agent.service"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")


def compile_argv(source: Path | str, output: Path | str, cc: str = "gcc") -> list[str]:
    """The compiler command line that builds the agent (the same in the image's tree and in tests)."""
    return [cc, *CFLAGS, "-o", str(output), str(source)]


def binary_key() -> str:
    """What a built agent is made from (its source and flags): the name of its slot in the cache."""
    return hashlib.sha256(SOURCE.read_bytes() + "\0".join(CFLAGS).encode()).hexdigest()[:16]


def cached_binary(cache_dir: Path) -> Path:
    """Where a built agent is kept for images that cannot build one (OCI imports)."""
    return cache_dir / "agent" / binary_key() / "banger-agent"


def keep_binary(built: Path, cache_dir: Path) -> Path:
    """Copy an agent built from today's source (a golden build's) into the cache; its path there."""
    dest = cached_binary(cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, built.read_bytes(), 0o755)
    return dest


async def host_binary(cache_dir: Path, reporter: Reporter) -> Path | None:
    """A static agent for an image that has no compiler: the cached one (from a golden build or an earlier
    call), else built now with the host's gcc; None (and a note) when neither is possible."""
    dest = cached_binary(cache_dir)
    if dest.is_file():
        return dest
    if shutil.which("gcc") is None:
        reporter.note("no banger-agent for this image: build the golden image once (`banger image build`) "
                      "or install gcc and libc6-dev; until then its VMs run commands over SSH")
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(8)}")
    try:
        await run(compile_argv(SOURCE, part))
    except HostError as exc:
        part.unlink(missing_ok=True)
        reporter.note(f"no banger-agent for this image: the host's gcc could not build it statically ({exc}); "
                      "libc6-dev provides the static C library")
        return None
    os.replace(part, dest)
    return dest
