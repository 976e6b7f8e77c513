"""`banger image ...` end to end: real CLI, real bangerd, real ext4 images, bundles over loopback HTTP."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.model import VM, VMSpec
from banger.store.db import open_db
from banger.store.repo import Store
from banger.testing.daemon import Home

TEST_CACHE = Path(os.environ.get("BANGER_TEST_CACHE", "/var/tmp/banger-test-cache"))


def _json(home: Home, *args: str) -> Any:
    return json.loads(home.cli(*args, "--json", check=True).stdout)


def _names(home: Home) -> list[str]:
    return [i["name"] for i in _json(home, "image", "list")]


def _entries(home: Home) -> list[str]:
    return sorted(p.name for p in home.layout.images_dir.iterdir())


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A small real ext4 with an os-release and a /root holding a dotfile (the work seed's source)."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "root").mkdir(mode=0o700)
    (tree / "etc/os-release").write_text("ID=tiny\n")
    (tree / "root/.profile").write_text("echo hello\n")
    image = tmp_path / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "32M"], check=True)
    return image


@pytest.fixture
def with_kernel(home: Home, default_kernel: Path) -> Home:
    """A home where kernel ``tk`` is installed (imported from the real default kernel)."""
    home.cli("kernel", "import", "tk", "--vmlinux", str(default_kernel / "vmlinux"),
             "--initrd", str(default_kernel / "initrd.img"), check=True)
    return home


def _register(home: Home, name: str, rootfs: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return home.cli("image", "register", name, "--rootfs", str(rootfs), *extra)


def test_register_show_list(with_kernel: Home, rootfs: Path) -> None:
    home = with_kernel
    done = _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    assert done.returncode == 0, done.stderr
    shown = _json(home, "image", "show", "tiny")
    assert shown["kernel_ref"] == "tk" and shown["source"] == "register" and shown["distro"] == "unknown"
    image_dir = Path(shown["dir"])
    assert sorted(p.name for p in image_dir.iterdir()) == ["manifest.json", "rootfs.ext4", "work-seed.ext4"]
    seed = subprocess.run(["debugfs", "-R", "ls /", str(image_dir / "work-seed.ext4")],
                          capture_output=True, text=True, check=True)
    assert ".profile" not in seed.stdout, "nothing of a registered rootfs is unpacked on the host"
    assert "tiny" in home.cli("image", "list", check=True).stdout
    again = _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    assert again.returncode == 4 and "already exists" in again.stderr


def test_register_refusals_leave_nothing(with_kernel: Home, rootfs: Path, tmp_path: Path) -> None:
    home = with_kernel
    not_ext4 = tmp_path / "junk.img"
    not_ext4.write_bytes(os.urandom(1 << 16))
    failed = _register(home, "junk", not_ext4, "--kernel-ref", "tk")
    assert failed.returncode == 2 and "not an ext4" in failed.stderr
    unknown = _register(home, "nok", rootfs, "--kernel-ref", "no-such-kernel")
    assert unknown.returncode == 3 and "no-such-kernel" in unknown.stderr
    assert _names(home) == [] and _entries(home) == []


def test_register_with_its_own_kernel(home: Home, rootfs: Path, default_kernel: Path) -> None:
    done = _register(home, "own", rootfs, "--kernel", str(default_kernel / "vmlinux"))
    assert done.returncode == 0, done.stderr
    assert _json(home, "image", "show", "own")["kernel_ref"] == "own"
    assert _json(home, "kernel", "show", "own")["source"] == "import"


def test_export_then_pull_over_http_round_trip(with_kernel: Home, rootfs: Path, served: tuple[Path, str]) -> None:
    home = with_kernel
    www, base = served
    _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    exported = _json(home, "image", "export", "tiny", "-o", str(www / "tiny.tar.zst"))
    assert exported["path"] == str(www / "tiny.tar.zst") and len(exported["sha256"]) == 64
    pulled = home.cli("image", "pull", f"{base}/tiny.tar.zst", "--name", "tiny2", "--sha256", exported["sha256"])
    assert pulled.returncode == 0, pulled.stderr
    original, copy = _json(home, "image", "show", "tiny"), _json(home, "image", "show", "tiny2")
    assert copy["source"] == "bundle" and copy["kernel_ref"] == "tk"
    assert copy["manifest"]["rootfs_sha256"] == original["manifest"]["rootfs_sha256"]
    assert copy["manifest"]["extra"]["imported_from"] == f"{base}/tiny.tar.zst"
    no_sha = home.cli("image", "pull", f"{base}/tiny.tar.zst", "--name", "tiny3")
    assert no_sha.returncode == 2 and "--sha256" in no_sha.stderr


def test_pull_of_a_local_bundle_derives_its_name(with_kernel: Home, rootfs: Path, tmp_path: Path) -> None:
    home = with_kernel
    _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    out = tmp_path / "bundles"
    out.mkdir()
    bundle = Path(_json(home, "image", "export", "tiny", "-o", str(out))["path"])
    assert bundle.name.startswith("tiny-") and bundle.name.endswith(".tar.zst")
    home.cli("image", "delete", "tiny", check=True)
    relative = os.path.relpath(bundle)  # the CLI makes it absolute for the daemon
    assert home.cli("image", "pull", relative, check=True).returncode == 0
    assert _names(home) == ["tiny"]


def test_corrupted_bundle_fails_and_leaves_nothing(with_kernel: Home, rootfs: Path,
                                                    served: tuple[Path, str]) -> None:
    home = with_kernel
    www, base = served
    _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    good = _json(home, "image", "export", "tiny", "-o", str(www / "good.tar.zst"))
    data = bytearray((www / "good.tar.zst").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (www / "bad.tar.zst").write_bytes(bytes(data))
    failed = home.cli("image", "pull", f"{base}/bad.tar.zst", "--name", "broken", "--sha256", good["sha256"])
    assert failed.returncode == 8, failed.stderr
    assert "sha256 mismatch" in failed.stderr
    assert _names(home) == ["tiny"]
    assert _entries(home) == ["tiny"], "no directory, staging or work dir may be left behind"
    local = home.cli("image", "pull", str(www / "bad.tar.zst"), "--name", "broken2", "--sha256", good["sha256"])
    assert local.returncode == 8 and "sha256 mismatch" in local.stderr
    assert _entries(home) == ["tiny"]


def test_delete_refused_while_a_vm_uses_it(with_kernel: Home, rootfs: Path, tmp_path: Path) -> None:
    home = with_kernel
    _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    home.stop_daemon()
    store = Store(open_db(home.layout.db))
    store.insert_vm(VM(id="c" * 12, name="box", spec=VMSpec(image="tiny"), state="stopped",
                       vm_dir=str(tmp_path / "vm")))
    store.close()
    refused = home.cli("image", "delete", "tiny")
    assert refused.returncode == 5 and "box" in refused.stderr
    forced = home.cli("image", "pull", "/nonexistent/tiny.tar.zst", "--name", "tiny", "--force")
    assert forced.returncode == 5, "an image in use cannot be replaced either"
    assert _names(home) == ["tiny"]
    home.stop_daemon()
    store = Store(open_db(home.layout.db))
    store.delete_vm("c" * 12)
    store.close()
    home.cli("image", "delete", "tiny", check=True)
    assert _names(home) == [] and _entries(home) == []


def test_promote_sets_the_default_and_delete_clears_it(with_kernel: Home, rootfs: Path) -> None:
    home = with_kernel
    _register(home, "tiny", rootfs, "--kernel-ref", "tk")
    assert home.cli("image", "promote", "nope").returncode == 3
    home.cli("image", "promote", "tiny", check=True)
    store = Store(open_db(home.layout.db))
    try:
        assert store.get_setting("default_image") == "tiny"
        home.cli("image", "delete", "tiny", check=True)
        assert not store.get_setting("default_image")
    finally:
        store.close()


def test_cache_prune_removes_unreferenced_blobs(home: Home) -> None:
    blobs = home.layout.cache_dir / "images/oci/blobs/sha256"
    blobs.mkdir(parents=True)
    for i in range(3):
        (blobs / f"{i:064x}").write_bytes(b"x" * 1000)
    dry = _json(home, "image", "cache", "prune", "--dry-run")
    assert len(dry["removed"]) == 3 and dry["bytes"] == 3000
    assert len(list(blobs.iterdir())) == 3
    done = _json(home, "image", "cache", "prune")
    assert done["bytes"] == 3000 and list(blobs.iterdir()) == []


@pytest.fixture
def golden_home(home: Home, golden_image: Path, default_kernel: Path) -> Home:
    """A home whose image cache is the test cache's golden build, with the default kernel installed."""
    home.layout.cache_dir.mkdir(parents=True)
    (home.layout.cache_dir / "images").symlink_to(TEST_CACHE / "golden-build")
    home.cli("kernel", "import", "debian-6.1", "--vmlinux", str(default_kernel / "vmlinux"),
             "--initrd", str(default_kernel / "initrd.img"), check=True)
    return home


def test_build_uses_the_cached_golden_build(golden_home: Home, golden_image: Path) -> None:
    home = golden_home
    built = home.cli("image", "build")
    assert built.returncode == 0, built.stderr
    shown = _json(home, "image", "show", "debian-bookworm")
    expected = json.loads((golden_image / "manifest.json").read_text())
    assert shown["source"] == "build" and shown["kernel_ref"] == "debian-6.1"
    assert shown["manifest"]["rootfs_sha256"] == expected["rootfs_sha256"]
    ops = _json(home, "daemon", "operations")
    build_op = next(o for o in ops if o["kind"] == "image.build")
    assert any("reusing cached golden build" in line for line in build_op["log"]), build_op
    again = home.cli("image", "build")
    assert again.returncode == 4 and "--force" in again.stderr


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _one_layer_layout(path: Path, tag: str) -> None:
    """A hand-written OCI image layout: one gzip layer with busybox, an os-release and /root/.profile."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755),
                                 ("etc/os-release", b"ID=ocitest\n", 0o644), ("root/.profile", b"hi\n", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    layer = buf.getvalue()
    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        (blobs / _sha(data).split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": _sha(data), "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": [blob(gzip.compress(layer), "application/vnd.oci.image.layer.v1.tar+gzip")]}
    desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on a loopback port; its host:port."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'reg'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "docker-registry did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_oci_pull_through_the_daemon_and_cache_prune(home: Home, default_kernel: Path, registry: str,
                                                     tmp_path: Path) -> None:
    home.cli("kernel", "import", "debian-6.1", "--vmlinux", str(default_kernel / "vmlinux"), check=True)
    _one_layer_layout(tmp_path / "oci", "1")
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'oci'}:1",
                    f"docker://{registry}/test/tiny:1"], check=True, capture_output=True, timeout=120)
    pulled = home.cli("image", "pull", f"{registry}/test/tiny:1")
    assert pulled.returncode == 0, pulled.stderr
    shown = _json(home, "image", "show", "tiny-1")  # name derived from repository and tag
    assert shown["source"] == "oci" and shown["distro"] == "ocitest" and shown["kernel_ref"] == "debian-6.1"
    blobs = home.layout.cache_dir / "images/oci/blobs/sha256"
    assert len(list(blobs.iterdir())) == 3  # config, layer, manifest... all referenced by the image
    assert _json(home, "image", "cache", "prune")["removed"] == []
    home.cli("image", "delete", "tiny-1", check=True)
    pruned = _json(home, "image", "cache", "prune")
    assert len(pruned["removed"]) == len(shown["manifest"]["extra"]["oci"]["blobs"]) > 0
    assert list(blobs.iterdir()) == []
