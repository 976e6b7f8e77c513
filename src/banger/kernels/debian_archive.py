"""Resolving and fetching Debian packages through the archive's signed index (InRelease -> Packages -> .deb).

Only bytes whose signature or sha256 has been checked are trusted: the InRelease file is verified with
``gpgv`` against the Debian archive keyring and only the text gpgv prints as signed is parsed; the
Packages index must match the sha256 listed there; each .deb must match its sha256 and size in Packages.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from banger.errors import FetchError, IntegrityError, NotFound
from banger.host import http
from banger.host.run import run
from banger.kernels.debversion import compare_versions, version_key
from banger.progress import NullReporter, Reporter

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class Package:
    """One binary package as the signed Packages index describes it."""

    name: str  # "linux-image-6.1.0-50-amd64"
    version: str  # "6.1.176-1"
    filename: str  # "pool/main/l/linux-signed-amd64/linux-image-..._amd64.deb"
    sha256: str
    size: int

    def as_record(self) -> dict[str, str | int]:
        """The fields a manifest records."""
        return {"name": self.name, "version": self.version, "filename": self.filename,
                "sha256": self.sha256, "size": self.size}


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Deb822 paragraphs as dicts (continuation lines joined with newlines)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def release_sha256(release_text: str, path: str) -> tuple[str, int]:
    """The (sha256, size) that a verified Release text lists for ``path`` (e.g. main/binary-amd64/Packages.xz)."""
    fields = parse_stanzas(release_text)
    table = fields[0].get("SHA256", "") if fields else ""
    for row in table.splitlines():
        parts = row.split()
        if len(parts) == 3 and parts[2] == path:
            return parts[0].lower(), int(parts[1])
    raise IntegrityError(f"the signed Release file does not list {path}",
                         hint="the mirror may be incomplete; try another debian_mirror")


def check_suite(release_text: str, suite: str) -> None:
    """Refuse a signed Release for another suite (a replay of, say, bullseye's index as bookworm)."""
    fields = (parse_stanzas(release_text) or [{}])[0]
    if suite not in (fields.get("Codename"), fields.get("Suite")):
        raise IntegrityError(f"the signed Release is for {fields.get('Codename')!r}, not {suite!r}",
                             hint="the mirror served the wrong suite's index")


def packages_from_index(text: str) -> list[Package]:
    """Every complete package stanza of a Packages index."""
    out = []
    for s in parse_stanzas(text):
        if {"Package", "Version", "Filename", "SHA256", "Size"} <= s.keys():
            out.append(Package(s["Package"], s["Version"], s["Filename"], s["SHA256"].lower(), int(s["Size"])))
    return out


def newest_matching(packages: list[Package], pattern: str) -> Package:
    """The package with the highest Debian version whose name matches ``pattern``; NotFound if none."""
    rx = re.compile(pattern)
    found = [p for p in packages if rx.search(p.name)]
    if not found:
        raise NotFound(f"no package matching {pattern!r} in the Debian index",
                       hint="the catalog entry may be outdated for this suite")
    return max(found, key=lambda p: version_key(p.version))


def newest_named(packages: list[Package], name: str) -> Package:
    """The highest version of the package called exactly ``name``."""
    return newest_matching(packages, f"^{re.escape(name)}$")


async def verify_inrelease(signed: bytes, keyring: Path = DEFAULT_KEYRING) -> str:
    """Check an InRelease file's signature with gpgv and return only the signed text."""
    with tempfile.TemporaryDirectory(prefix="banger-gpgv-") as tmp:
        src = Path(tmp) / "InRelease"
        src.write_bytes(signed)
        result = await run(["gpgv", "--keyring", keyring, "--output", "-", src], check=False)
    if result.returncode != 0 or not result.stdout:
        tail = "; ".join(result.err.strip().splitlines()[-3:])
        raise IntegrityError(f"InRelease signature check failed: {tail or 'no valid signature'}",
                             hint="the mirror served a file not signed by the Debian archive keyring; "
                                  "nothing was used")
    return result.out


class Archive:
    """One suite of one Debian mirror, with its signed package index loaded once."""

    def __init__(self, mirror: str, suite: str, *, component: str = "main", arch: str = "amd64",
                 keyring: Path = DEFAULT_KEYRING, client: httpx.AsyncClient | None = None) -> None:
        self.mirror = mirror.rstrip("/")
        self.suite, self.component, self.arch = suite, component, arch
        self.keyring = keyring
        self.client = client
        self.packages: list[Package] = []

    @property
    def index_path(self) -> str:
        return f"{self.component}/binary-{self.arch}/Packages.xz"

    async def load(self) -> Archive:
        """Fetch and verify InRelease, then the Packages index it pins."""
        dist = f"{self.mirror}/dists/{self.suite}"
        release = await verify_inrelease(await http.fetch_bytes(f"{dist}/InRelease", http=self.client),
                                         self.keyring)
        check_suite(release, self.suite)
        want_sha, want_size = release_sha256(release, self.index_path)
        raw = await http.fetch_bytes(f"{dist}/{self.index_path}", http=self.client)
        got = hashlib.sha256(raw).hexdigest()
        if got != want_sha or len(raw) != want_size:
            raise IntegrityError(f"{dist}/{self.index_path}: sha256 {got} does not match the signed "
                                 f"Release ({want_sha})", hint="the mirror served a tampered or stale index")
        try:
            text = lzma.decompress(raw).decode("utf-8", errors="replace")
        except lzma.LZMAError as exc:
            raise FetchError(f"{dist}/{self.index_path} is not valid xz: {exc}") from exc
        self.packages = packages_from_index(text)
        return self

    def resolve(self, pattern: str) -> Package:
        """The newest package whose name matches ``pattern``."""
        return newest_matching(self.packages, pattern)

    def url(self, package: Package) -> str:
        return f"{self.mirror}/{package.filename}"

    async def download(self, package: Package, cache_dir: Path, reporter: Reporter | None = None) -> Path:
        """The verified .deb for ``package``, from ``cache_dir`` (keyed by sha256) or downloaded into it."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        dest = cache_dir / f"{package.sha256}.deb"
        if dest.is_file() and dest.stat().st_size == package.size and http.sha256_file(dest) == package.sha256:
            return dest
        await http.download(self.url(package), dest, sha256=package.sha256, size=package.size,
                            http=self.client, reporter=reporter or NullReporter())
        return dest


__all__ = ["Archive", "Package", "compare_versions", "newest_matching", "newest_named", "verify_inrelease"]
