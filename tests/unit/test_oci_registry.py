"""Registry client: references, WWW-Authenticate parsing, the bearer-token retry, blob verification, prune."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from banger.errors import FetchError, IntegrityError, InvalidArgument, NotFound
from banger.images.oci_registry import (
    DOCKER_LIST,
    OCI_MANIFEST,
    BlobCache,
    Descriptor,
    RegistryClient,
    parse_reference,
    parse_www_authenticate,
    pick_platform,
    prune_cache,
    referenced_digests,
)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_parse_reference_forms() -> None:
    ref = parse_reference("127.0.0.1:5000/team/app:v1")
    assert (ref.registry, ref.repository, ref.tag, ref.scheme) == ("127.0.0.1:5000", "team/app", "v1", "http")
    assert ref.base_url == "http://127.0.0.1:5000/v2/team/app"
    pinned = parse_reference("registry.example.com/app@sha256:" + "a" * 64)
    assert pinned.scheme == "https" and pinned.target == "sha256:" + "a" * 64
    assert parse_reference("localhost/app").tag == "latest"
    assert parse_reference("registry.example.com/app", insecure=True).scheme == "http"
    hub = parse_reference("debian:12")
    assert (hub.registry, hub.repository, hub.tag) == ("registry-1.docker.io", "library/debian", "12")


@pytest.mark.parametrize("bad", ["", "Host/App", "h.io/app:", "h.io/app@sha256:12", "h.io/a/../b"])
def test_parse_reference_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(bad)


def test_parse_www_authenticate() -> None:
    ch = parse_www_authenticate(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push"'
    )
    assert ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/app:pull,push",
    }
    assert parse_www_authenticate('Basic realm="x"').scheme == "basic"
    assert parse_www_authenticate('Bearer realm="a\\"b", error=invalid_token').params == {
        "realm": 'a"b',
        "error": "invalid_token",
    }


def test_pick_platform() -> None:
    index = {"mediaType": DOCKER_LIST, "manifests": [
        {"digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "2" * 64, "size": 2, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert pick_platform(index).digest == "sha256:" + "2" * 64
    with pytest.raises(NotFound, match="linux/arm64"):
        pick_platform({"manifests": index["manifests"][:1]})


class TokenRegistry(BaseHTTPRequestHandler):
    """A loopback registry that answers 401 + a Bearer challenge until given the token from /token."""

    blobs: dict[str, bytes] = {}
    token_queries: list[dict[str, list[str]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/token":
            self.token_queries.append(parse_qs(url.query))
            return self.reply(200, json.dumps({"token": "s3cret"}).encode(), "application/json")
        if self.headers.get("Authorization") != "Bearer s3cret":
            port = self.server.server_address[1]  # type: ignore[index]
            challenge = f'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",' \
                        'scope="repository:team/app:pull"'
            return self.reply(401, b"{}", "application/json", {"WWW-Authenticate": challenge})
        name = url.path.rsplit("/", 1)[-1]
        if name in self.blobs:
            return self.reply(200, self.blobs[name], OCI_MANIFEST if "manifests" in url.path else "")
        return self.reply(404, b"{}", "application/json")

    def reply(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def token_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    TokenRegistry.blobs = {}
    TokenRegistry.token_queries = []
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_bearer_token_retry_and_blob_verification(token_registry: str, tmp_path: Path) -> None:
    layer, config = b"layer bytes", b'{"architecture":"amd64","os":"linux"}'
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                    "size": len(layer)}],
    }).encode()
    TokenRegistry.blobs = {"v1": manifest, digest(layer): layer, digest(config): config}
    cache = BlobCache(tmp_path)
    async with RegistryClient(parse_reference(f"{token_registry}/team/app:v1"), cache) as client:
        image = await client.resolve()
        assert image.digest == digest(manifest) and image.layers[0].digest == digest(layer)
        path = await client.fetch_blob(image.layers[0])
        assert path.read_bytes() == layer and path == cache.path(digest(layer))
        assert await client.fetch_blob(image.layers[0]) == path
        assert client.blobs_downloaded == [digest(layer)]
    assert TokenRegistry.token_queries == [{"service": ["test-registry"], "scope": ["repository:team/app:pull"]}]
    assert cache.has(digest(manifest))


async def test_tampered_blob_is_rejected_and_not_cached(token_registry: str, tmp_path: Path) -> None:
    good = b"the real layer"
    TokenRegistry.blobs = {digest(good): b"something else entirely"}
    cache = BlobCache(tmp_path)
    async with RegistryClient(parse_reference(f"{token_registry}/team/app:v1"), cache) as client:
        with pytest.raises(IntegrityError, match="hashes to|sent more than the 14 bytes declared"):
            await client.fetch_blob(Descriptor("application/octet-stream", digest(good), len(good)))
        with pytest.raises(NotFound):
            await client.fetch_blob(Descriptor("application/octet-stream", digest(b"absent"), 6))
    assert list(cache.root.iterdir()) == []


async def test_unreachable_registry_is_a_fetch_error(tmp_path: Path) -> None:
    async with RegistryClient(parse_reference("127.0.0.1:9/team/app:v1"), BlobCache(tmp_path)) as client:
        with pytest.raises(FetchError, match="127.0.0.1:9"):
            await client.resolve()


def test_prune_cache_keeps_referenced_blobs(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    kept, dropped = digest(b"kept"), digest(b"dropped")
    cache.put_bytes(kept, b"kept")
    cache.put_bytes(dropped, b"dropped")
    (cache.root / "abc.123.part").write_bytes(b"stale")
    keep = referenced_digests([{"oci": {"blobs": [kept]}}, {"packages": []}])
    planned = prune_cache(tmp_path, keep, dry_run=True)
    assert sorted(p.name for p, _ in planned) == sorted([dropped.split(":")[1], "abc.123.part"])
    assert dict((p.name, s) for p, s in planned)[dropped.split(":")[1]] == len(b"dropped")
    assert len(list(cache.root.iterdir())) == 3
    assert prune_cache(tmp_path, keep) == planned
    assert [p.name for p in cache.root.iterdir()] == [kept.split(":")[1]]
    assert prune_cache(tmp_path / "nothing", keep) == []
