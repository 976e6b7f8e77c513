"""Installing Firecracker from its official release (Debian 12 has no package): ``scripts/setup.sh
--firecracker`` runs ``python -m banger.host.firecracker_release``.

The release tarball is downloaded with banger's downloader, and only its ``firecracker`` member is taken:
streamed out, checked against the pinned sha256 and renamed into place, so nothing unverified is ever
installed. The pin is the sha256 of the v1.12.1 x86_64 binary itself (the same build the test suite runs).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from banger.errors import BangerError, IntegrityError
from banger.host.http import download

VERSION = "1.12.1"
ARCH = "x86_64"
URL = (f"https://github.com/firecracker-microvm/firecracker/releases/download/v{VERSION}/"
       f"firecracker-v{VERSION}-{ARCH}.tgz")
MEMBER = f"release-v{VERSION}-{ARCH}/firecracker-v{VERSION}-{ARCH}"
SHA256 = "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930"
MAX_TARBALL = 256 << 20


async def install(dest: Path, url: str = URL) -> Path:
    """Download the release from ``url`` and install its verified binary at ``dest``; returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".firecracker-", dir=dest.parent) as tmp:
        tarball = Path(tmp) / "release.tgz"
        await download(url, tarball, max_bytes=MAX_TARBALL)
        staged = Path(tmp) / "firecracker"
        digest = await asyncio.to_thread(_extract_member, tarball, staged)
        if digest != SHA256:
            raise IntegrityError(f"the firecracker binary in {url} has sha256 {digest}, not the pinned {SHA256}",
                                 hint="nothing was installed; check the URL (it must be the official v1.12.1 "
                                      "release)")
        os.chmod(staged, 0o755)
        os.replace(staged, dest)
    return dest


def _extract_member(tarball: Path, out: Path) -> str:
    """Stream the release's one binary out of ``tarball``; its sha256."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.getmember(MEMBER)
            if not member.isreg():
                raise IntegrityError(f"{MEMBER} in the release is not a regular file")
            src = tar.extractfile(member)
            assert src is not None
            digest = hashlib.sha256()
            with src, open(out, "wb") as f:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
    except KeyError as exc:
        raise IntegrityError(f"the release tarball has no {MEMBER}", hint="is it the v1.12.1 x86_64 release?") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IntegrityError(f"the release tarball is unreadable: {exc}") from exc
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m banger.host.firecracker_release",
                                     description=f"install Firecracker v{VERSION} from its official release")
    parser.add_argument("--dest", type=Path, default=Path("/usr/local/bin/firecracker"))
    parser.add_argument("--url", default=URL, help="the release tarball (tests serve one on loopback)")
    args = parser.parse_args(argv)
    try:
        path = asyncio.run(install(args.dest, args.url))
    except BangerError as exc:
        print(f"firecracker: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"firecracker v{VERSION} installed at {path} (sha256 {SHA256[:16]}...)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
