"""OCI distribution (registry v2) client: references, bearer auth, manifests, a content-addressed blob cache.

Cache layout: ``<cache>/oci/blobs/sha256/<hex>``, one file per blob (layers, configs and manifests alike),
written through a ``.part`` staging file and renamed into place only once its digest matched.

Prune rule (``banger image cache prune``): a blob is kept when its digest is referenced by a registered
image (the manifest, config and layer digests each OCI image records in ``extra["oci"]``, see
:func:`referenced_digests`); every other blob, and any leftover staging file, is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from banger.errors import FetchError, IntegrityError, InvalidArgument, NotFound
from banger.host.http import CHUNK
from banger.host.http import client as http_client
from banger.progress import NullReporter, Reporter

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*IMAGE_TYPES, *INDEX_TYPES))

DOCKER_HUB = "registry-1.docker.io"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MAX_MANIFEST = 4 << 20
MAX_BLOB = 32 << 30  # a blob whose descriptor gives no size may not be bigger than this


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@digest]``."""

    registry: str  # "127.0.0.1:5000", "registry-1.docker.io"
    repository: str  # "library/debian"
    tag: str = "latest"  # "bookworm"
    digest: str = ""  # "sha256:..." when pinned; wins over the tag
    insecure: bool = False  # plain http even for a non-loopback registry

    @property
    def scheme(self) -> str:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else self.registry
        loopback = host in LOOPBACK_HOSTS or self.registry.startswith("[::1]")
        return "http" if self.insecure or loopback else "https"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repository}"

    @property
    def target(self) -> str:
        """What to ask the manifests endpoint for: the digest when pinned, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_reference(text: str, *, insecure: bool = False) -> Reference:
    """Parse ``host[:port]/repo[:tag|@digest]``; a first part without ``.``/``:`` means Docker Hub."""
    rest, _, digest = text.strip().partition("@")
    if digest and not DIGEST_RE.match(digest):
        raise InvalidArgument(f"bad digest in image reference {text!r}", hint="use @sha256:<64 hex digits>")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest if slash else f"library/{rest}"
    tag = "latest"
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    if not REPO_RE.match(path) or not TAG_RE.match(tag):
        raise InvalidArgument(
            f"{text!r} is not a valid image reference",
            hint="write REGISTRY[:PORT]/REPOSITORY[:TAG] or ...@sha256:DIGEST (127.0.0.1:5000/debian:12)",
        )
    return Reference(registry, path, tag, digest, insecure)


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # "bearer"
    params: Mapping[str, str] = field(default_factory=dict)  # {"realm": ..., "service": ..., "scope": ...}


_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_www_authenticate(header: str) -> Challenge:
    """Parse ``Bearer realm="...",service="...",scope="..."`` into a scheme and its parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        quoted, bare = m.group(2), m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        pos = m.end()
    return Challenge(scheme.lower(), params)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor from a manifest: media type, digest and size."""

    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        digest = str(obj.get("digest", ""))
        if not DIGEST_RE.match(digest):
            raise IntegrityError(f"manifest names an unsupported or malformed digest {digest!r}")
        return cls(str(obj.get("mediaType", "")), digest, int(obj.get("size", 0)), obj.get("platform") or {})


@dataclass(frozen=True)
class ImageManifestRef:
    """A resolved single-platform image: its manifest digest, config and layers (oldest first)."""

    digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    index_digest: str = ""  # the manifest list it was picked from, if any

    @property
    def digests(self) -> list[str]:
        """Every blob digest this image needs kept in the cache."""
        out = [self.digest, self.config.digest, *(d.digest for d in self.layers)]
        return out + ([self.index_digest] if self.index_digest else [])


def pick_platform(index: Mapping[str, Any], *, os_name: str = "linux", arch: str = "amd64") -> Descriptor:
    """The manifest for ``os_name/arch`` in a manifest list / OCI index; NotFound names what exists."""
    seen = []
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        seen.append(f"{plat.get('os', '?')}/{plat.get('architecture', '?')}")
        if plat.get("os") == os_name and plat.get("architecture") == arch:
            return Descriptor.from_json(entry)
    raise NotFound(
        f"the image index has no {os_name}/{arch} manifest (it has: {', '.join(seen) or 'none'})",
        hint="banger guests are x86_64: pull an image published for linux/amd64",
    )


def parse_image_manifest(
    data: bytes, digest: str, media_type: str, index_digest: str = ""
) -> ImageManifestRef:
    """Config and layers of a single-platform manifest (OCI or Docker schema 2)."""
    obj = _json(data, digest)
    media_type = str(obj.get("mediaType") or media_type)
    if media_type not in IMAGE_TYPES:
        raise InvalidArgument(
            f"manifest {digest} has unsupported media type {media_type!r}",
            hint="banger pulls OCI and Docker schema 2 images",
        )
    layers = tuple(Descriptor.from_json(layer) for layer in obj.get("layers") or [])
    config = Descriptor.from_json(obj.get("config") or {})
    return ImageManifestRef(digest, media_type, config, layers, index_digest)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} is not a JSON object")
    return obj


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobCache:
    """Content-addressed blobs under ``<cache_dir>/oci/blobs/sha256``."""

    def __init__(self, cache_dir: Path):
        self.root = cache_dir / "oci" / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (it may not exist yet)."""
        if not DIGEST_RE.match(digest):
            raise InvalidArgument(f"unsupported blob digest {digest!r}", hint="only sha256 is supported")
        return self.root / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, digest: str, data: bytes) -> Path:
        """Store ``data`` (already verified against ``digest``) atomically."""
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        part.write_bytes(data)
        os.replace(part, dest)
        return dest


class RegistryClient:
    """One registry session: anonymous or bearer-token access, manifests, and blobs into a BlobCache."""

    def __init__(self, ref: Reference, cache: BlobCache, *, http: httpx.AsyncClient | None = None):
        self.ref = ref
        self.cache = cache
        self._http = http or http_client()
        self._own = http is None
        self._token = ""
        self.blobs_downloaded: list[str] = []  # digests fetched over the network this session

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def resolve(self) -> ImageManifestRef:
        """The linux/amd64 image the reference names, following a manifest list / OCI index."""
        data, media_type, digest = await self._manifest(self.ref.target)
        if media_type in INDEX_TYPES or _json(data, digest).get("manifests") is not None:
            chosen = pick_platform(_json(data, digest))
            sub, sub_type, _ = await self._manifest(chosen.digest)
            return parse_image_manifest(sub, chosen.digest, sub_type or chosen.media_type, digest)
        return parse_image_manifest(data, digest, media_type)

    async def _manifest(self, target: str) -> tuple[bytes, str, str]:
        """Manifest bytes, media type and digest; served from the cache when ``target`` is a digest."""
        if DIGEST_RE.match(target) and self.cache.has(target):
            data = self.cache.path(target).read_bytes()
            return data, str(_json(data, target).get("mediaType", "")), target
        url = f"{self.ref.base_url}/manifests/{target}"
        async with self._stream(url, {"Accept": ACCEPT}) as resp:
            data = await _read_capped(resp, url)
            media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        digest = sha256_digest(data)
        if DIGEST_RE.match(target) and digest != target:
            raise IntegrityError(f"manifest {target} from {self.ref.registry} hashes to {digest}")
        self.cache.put_bytes(digest, data)
        return data, media_type, digest

    async def fetch_blob(self, desc: Descriptor, reporter: Reporter | None = None) -> Path:
        """The cached path of blob ``desc``, downloading and verifying it first when missing."""
        dest = self.cache.path(desc.digest)
        if dest.is_file():
            return dest
        reporter = reporter or NullReporter()
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        url = f"{self.ref.base_url}/blobs/{desc.digest}"
        try:
            got, size = await self._download(url, part, desc.size, reporter)
            if got != desc.digest or (desc.size and size != desc.size):
                raise IntegrityError(
                    f"blob {desc.digest} of {self.ref} hashes to {got} ({size} bytes, {desc.size} expected)",
                    hint="the registry served corrupt or tampered data; nothing was cached",
                )
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        self.blobs_downloaded.append(desc.digest)
        return dest

    async def _download(self, url: str, part: Path, total: int, reporter: Reporter) -> tuple[str, int]:
        digest = hashlib.sha256()
        done = 0
        async with self._stream(url, {}) as resp:
            with open(part, "wb") as out:  # noqa: ASYNC230 - local disk writes of 1 MiB chunks
                async for chunk in resp.aiter_bytes(CHUNK):
                    done += len(chunk)
                    if done > (total or MAX_BLOB):  # a registry may not send more than it declared
                        raise IntegrityError(f"GET {url} sent more than the {total or MAX_BLOB} bytes declared",
                                             hint="the registry is broken or hostile; nothing was cached")
                    out.write(chunk)
                    digest.update(chunk)
                    reporter.progress(done, total or None)
        return "sha256:" + digest.hexdigest(), done

    def _stream(self, url: str, headers: dict[str, str]) -> _AuthStream:
        return _AuthStream(self, url, headers)

    async def authenticate(self, challenge: Challenge) -> None:
        """Fetch a bearer token from the challenge's realm (anonymous) and use it from now on."""
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise FetchError(
                f"{self.ref.registry} requires {challenge.scheme or 'unknown'} authentication",
                hint="banger pulls anonymously (bearer tokens only); make the repository public",
            )
        query = {k: v for k, v in challenge.params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        realm = challenge.params["realm"]
        try:
            resp = await self._http.get(realm, params=query)
        except httpx.HTTPError as exc:
            raise FetchError(f"token request to {realm} failed: {exc}") from exc
        if resp.status_code != 200:
            raise FetchError(f"token server {realm} answered HTTP {resp.status_code} for {self.ref}")
        body = _json(resp.content, f"token response from {realm}")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise FetchError(f"token server {realm} returned no token for {self.ref}")
        self._token = str(token)

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        return {**extra, **({"Authorization": f"Bearer {self._token}"} if self._token else {})}


class _AuthStream:
    """``async with``: a streamed GET that answers one bearer challenge and retries; errors -> FetchError."""

    def __init__(self, client: RegistryClient, url: str, headers: dict[str, str]):
        self.client, self.url, self.headers = client, url, headers
        self._cm: Any = None

    async def __aenter__(self) -> httpx.Response:
        try:
            resp = await self._open()
            if resp.status_code == 401 and "www-authenticate" in resp.headers:
                challenge = parse_www_authenticate(resp.headers["www-authenticate"])
                await self._close()
                await self.client.authenticate(challenge)
                resp = await self._open()
        except httpx.HTTPError as exc:
            await self._close()
            raise FetchError(f"GET {self.url} failed: {exc}", hint="check the registry address") from exc
        if resp.status_code != 200:
            await self._close()
            raise _status_error(self.url, resp.status_code, self.client.ref)
        return resp

    async def _open(self) -> httpx.Response:
        self._cm = self.client._http.stream("GET", self.url, headers=self.client._headers(self.headers))
        return await self._cm.__aenter__()

    async def _close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await cm.__aexit__(None, None, None)

    async def __aexit__(self, *exc: object) -> None:
        await self._close()


def _status_error(url: str, status: int, ref: Reference) -> Exception:
    if status == 404:
        return NotFound(f"{ref} was not found in the registry (GET {url} answered 404)",
                        hint="check the repository name and tag")
    if status in (401, 403):
        return FetchError(f"{ref}: the registry refused access (HTTP {status})",
                          hint="banger pulls anonymously; make the repository public")
    return FetchError(f"GET {url} answered HTTP {status}")


async def _read_capped(resp: httpx.Response, url: str) -> bytes:
    buf = bytearray()
    async for chunk in resp.aiter_bytes(CHUNK):
        buf += chunk
        if len(buf) > MAX_MANIFEST:
            raise FetchError(f"GET {url}: manifest larger than {MAX_MANIFEST} bytes")
    return bytes(buf)


def referenced_digests(extras: Iterable[Mapping[str, Any]]) -> set[str]:
    """The blob digests registered images keep alive, from each image manifest's ``extra`` dict."""
    keep: set[str] = set()
    for extra in extras:
        keep.update(str(d) for d in (extra.get("oci") or {}).get("blobs") or [])
    return keep


def prune_cache(
    cache_dir: Path, keep_digests: Iterable[str], dry_run: bool = False
) -> list[tuple[Path, int]]:
    """Remove cached blobs not in ``keep_digests`` (and stale staging files); return (path, size) of each."""
    root = BlobCache(cache_dir).root
    keep = {d.split(":", 1)[-1] for d in keep_digests}
    if not root.is_dir():
        return []
    doomed = [(p, p.lstat().st_size) for p in sorted(root.iterdir()) if p.name not in keep]
    if not dry_run:
        for path, _ in doomed:
            path.unlink(missing_ok=True)
    return doomed
