"""HTTP downloads: streamed to a staging file, sha256 checked, renamed into place only when whole."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from banger.errors import FetchError, IntegrityError
from banger.progress import NullReporter, Reporter

CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(30.0, read=120.0)
MAX_DOWNLOAD = 32 << 30  # no download banger makes (kernels, bundles, tools) comes near this


def client(**kwargs: object) -> httpx.AsyncClient:
    """An AsyncClient with banger's timeouts and redirects on."""
    return httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True, **kwargs)  # type: ignore[arg-type]


async def fetch_bytes(url: str, *, http: httpx.AsyncClient | None = None, max_bytes: int = 256 << 20) -> bytes:
    """GET ``url`` fully into memory (indexes, manifests); refuses bodies over ``max_bytes``."""
    own = http is None
    http = http or client()
    try:
        async with http.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise FetchError(f"GET {url} answered HTTP {resp.status_code}", hint="check the URL and mirror")
            buf = bytearray()
            async for chunk in resp.aiter_bytes(CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise FetchError(f"GET {url}: body larger than {max_bytes} bytes")
            return bytes(buf)
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url} failed: {exc}", hint="check network access to that host") from exc
    finally:
        if own:
            await http.aclose()


async def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    http: httpx.AsyncClient | None = None,
    reporter: Reporter | None = None,
    max_bytes: int = MAX_DOWNLOAD,
) -> str:
    """Stream ``url`` to ``dest`` and return its sha256; on a mismatch or error nothing is left at ``dest``.

    The download stops at ``size`` when it is known, else at ``max_bytes``.
    """
    reporter = reporter or NullReporter()
    own = http is None
    http = http or client()
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        async with http.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise FetchError(f"GET {url} answered HTTP {resp.status_code}", hint="check the URL and mirror")
            total = size or int(resp.headers.get("content-length") or 0) or None
            limit = size if size is not None else max_bytes
            done = 0
            with open(part, "wb") as out:
                async for chunk in resp.aiter_bytes(CHUNK):
                    done += len(chunk)
                    if done > limit:  # stop at the declared size: a server may not fill the disk
                        raise IntegrityError(f"GET {url} sent more than the {limit} bytes expected",
                                             hint="the server is broken or hostile; nothing was kept")
                    out.write(chunk)
                    digest.update(chunk)
                    reporter.progress(done, total)
        got = digest.hexdigest()
        if sha256 and got != sha256.lower():
            raise IntegrityError(
                f"sha256 mismatch for {url}: expected {sha256}, got {got}",
                hint="the download is corrupt or was tampered with; nothing was kept",
            )
        if size is not None and done != size:
            raise IntegrityError(f"size mismatch for {url}: expected {size} bytes, got {done}")
        os.replace(part, dest)
        return got
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url} failed: {exc}", hint="check network access to that host") from exc
    finally:
        part.unlink(missing_ok=True)
        if own:
            await http.aclose()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
