"""The default kernel built for real from Debian, refusal of tampered archives, and a boot under QEMU TCG."""

from __future__ import annotations

import asyncio
import gzip
import lzma
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from banger.errors import IntegrityError
from banger.host import ext4
from banger.host.http import client, fetch_bytes, sha256_file
from banger.host.run import run
from banger.kernels import catalog, cpio, elf, local
from banger.kernels.catalog import CatalogEntry, DebianSource, UrlSource
from banger.kernels.debian_archive import Archive, newest_matching, packages_from_index
from banger.kernels.manifest import read_manifest
from banger.kernels.modules import GUEST_MODULES, module_name

pytestmark = pytest.mark.system
DEBIAN_MIRROR = "http://deb.debian.org/debian"
INDEX = "dists/bookworm/main/binary-amd64/Packages.xz"


class Mirror:
    """A loopback HTTP server answering GET for a dict of path -> bytes (404 otherwise)."""

    def __init__(self, routes: dict[str, bytes], stall: str = "") -> None:
        self.routes, self.stall, self.release = routes, stall, threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.lstrip("/")
                if path == outer.stall:
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    self.wfile.write(b"x" * 4096)
                    outer.release.wait(30)
                    return
                body = outer.routes.get(path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def real_index() -> dict[str, bytes]:
    """The current signed InRelease and Packages.xz of bookworm (fetched once)."""
    async def fetch() -> dict[str, bytes]:
        return {path: await fetch_bytes(f"{DEBIAN_MIRROR}/{path}")
                for path in ("dists/bookworm/InRelease", INDEX)}
    return asyncio.run(fetch())


def _nothing_left(*dirs: Path) -> None:
    for d in dirs:
        assert not d.exists() or list(d.iterdir()) == [], f"{d} kept {list(d.iterdir())}"


async def _pull_from(routes: dict[str, bytes], tmp_path: Path) -> None:
    with Mirror(routes) as mirror:
        await local.pull(tmp_path / "kernels", catalog.get_entry("debian-6.1"), mirror=mirror.url,
                         cache_dir=tmp_path / "cache")


def _flip(data: bytes, needle: bytes) -> bytes:
    at = data.index(needle)
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


async def test_default_kernel_artifacts(default_kernel: Path) -> None:
    manifest = read_manifest(default_kernel)
    assert manifest.kernel_version.startswith("6.1.0-") and manifest.source == "debian"
    assert manifest.packages["kernel"].name.startswith("linux-image-6.1.0-")
    assert manifest.packages["busybox"].name == "busybox-static"
    for name, digest in manifest.files.items():
        assert sha256_file(default_kernel / name) == digest
    elf.require_x86_64((default_kernel / "vmlinux").read_bytes()[:64])
    entries = {e.name: e for e in cpio.read_cpio(gzip.decompress((default_kernel / "initrd.img").read_bytes()))}
    assert entries["init"].data.startswith(b"#!/bin/sh")
    assert entries["bin/busybox"].data[:4] == b"\x7fELF"
    in_initrd = {module_name(n) for n in entries if n.endswith(".ko")}
    assert set(GUEST_MODULES) <= in_initrd
    assert {"jbd2", "mbcache", "crc16", "vsock", "virtio_ring"} <= in_initrd
    dep = await ext4.debugfs(default_kernel / "modules.ext4", "cat /modules.dep")
    assert "kernel/fs/overlayfs/overlay.ko:" in dep
    assert "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko" in dep
    if manifest.modules_dep_by == "depmod":
        listing = await ext4.debugfs(default_kernel / "modules.ext4", "ls /")
        assert "modules.dep.bin" in listing and "modules.alias.bin" in listing


async def test_tampered_inrelease_refused(real_index: dict[str, bytes], tmp_path: Path) -> None:
    routes = dict(real_index)
    routes["dists/bookworm/InRelease"] = _flip(routes["dists/bookworm/InRelease"], b"main/binary-amd64/Packages.xz")
    with pytest.raises(IntegrityError, match="signature"):
        await _pull_from(routes, tmp_path)
    _nothing_left(tmp_path / "kernels", tmp_path / "cache")


async def test_unsigned_inrelease_refused(real_index: dict[str, bytes], tmp_path: Path) -> None:
    routes = dict(real_index)
    signed = routes["dists/bookworm/InRelease"].decode()
    body = signed.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----")[0]
    routes["dists/bookworm/InRelease"] = body.encode()
    with pytest.raises(IntegrityError):
        await _pull_from(routes, tmp_path)
    _nothing_left(tmp_path / "kernels", tmp_path / "cache")


async def test_tampered_packages_refused(real_index: dict[str, bytes], tmp_path: Path) -> None:
    routes = dict(real_index)
    routes[INDEX] = _flip(routes[INDEX], routes[INDEX][100:101])
    with pytest.raises(IntegrityError, match="does not match the signed Release"):
        await _pull_from(routes, tmp_path)
    _nothing_left(tmp_path / "kernels", tmp_path / "cache")


async def test_tampered_deb_refused(real_index: dict[str, bytes], tmp_path: Path) -> None:
    pkgs = packages_from_index(lzma.decompress(real_index[INDEX]).decode())
    source = catalog.get_entry("debian-6.1").source
    assert isinstance(source, DebianSource)
    kernel = newest_matching(pkgs, source.package_regex)
    routes = dict(real_index)
    routes[kernel.filename] = b"!<arch>\n" + b"\0" * 4096  # not the package the signed index pins
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        await _pull_from(routes, tmp_path)
    _nothing_left(tmp_path / "kernels", tmp_path / "cache")


async def test_cancelled_build_leaves_nothing(real_index: dict[str, bytes], banger_test_cache: Path,
                                             tmp_path: Path) -> None:
    source = catalog.get_entry("debian-6.1").source
    assert isinstance(source, DebianSource)
    routes = dict(real_index)
    async with client() as http:
        archive = Archive(DEBIAN_MIRROR, "bookworm", client=http)
        archive.packages = packages_from_index(lzma.decompress(real_index[INDEX]).decode())
        for pkg in (archive.resolve(source.package_regex), archive.resolve("^busybox-static$")):
            routes[pkg.filename] = (await archive.download(pkg, banger_test_cache / "debs")).read_bytes()
    with Mirror(routes) as mirror:
        task = asyncio.create_task(local.pull(tmp_path / "kernels", catalog.get_entry("debian-6.1"),
                                              mirror=mirror.url, cache_dir=tmp_path / "cache"))
        await asyncio.sleep(4.0)  # past the downloads, inside unpacking
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    _nothing_left(tmp_path / "kernels")


def _url_entry(url: str, sha: str) -> CatalogEntry:
    return CatalogEntry(name="fc-test", distro="firecracker", kernel_version="6.1",
                        source=UrlSource(vmlinux_url=f"{url}/vmlinux", vmlinux_sha256=sha))


async def test_url_pull_verifies_and_cancels_cleanly(default_kernel: Path, tmp_path: Path) -> None:
    vmlinux = (default_kernel / "vmlinux").read_bytes()
    kdir, cache = tmp_path / "kernels", tmp_path / "cache"
    with Mirror({"vmlinux": vmlinux}, stall="slow/vmlinux") as mirror:
        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            await local.pull(kdir, _url_entry(mirror.url, "0" * 64), cache_dir=cache)
        _nothing_left(kdir)
        manifest = await local.pull(kdir, _url_entry(mirror.url, sha256_file(default_kernel / "vmlinux")),
                                    cache_dir=cache)
        assert manifest.source == "url" and (kdir / "fc-test" / "vmlinux").stat().st_size == len(vmlinux)
        task = asyncio.create_task(local.pull(kdir, _url_entry(f"{mirror.url}/slow", "0" * 64), force=True,
                                              cache_dir=cache))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(p.name for p in kdir.iterdir()) == ["fc-test"]
    assert sorted(p.name for p in (kdir / "fc-test").iterdir()) == ["manifest.json", "vmlinux"]


# Under TCG on a busy host the kernel's PIT-based TSC calibration can fail and boot then stalls before
# the timer works; a given TSC frequency skips that calibration.
QEMU = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=on", "-accel", "tcg", "-cpu", "max",
        "-m", "512", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]
TCG_CMDLINE = "console=ttyS0 tsc_early_khz=2000000"


async def _boot(kernel: Path, log: Path, append: str, *disks: Path, nic: bool = False) -> str:
    argv: list[str | os.PathLike[str]] = [*QEMU, "-serial", f"file:{log}", "-kernel", kernel / "vmlinux"]
    argv += ["-initrd", kernel / "initrd.img", "-append", f"{TCG_CMDLINE} {append}"]
    if nic:  # a NIC on an empty hub: the guest gets eth0 and no path to anywhere
        argv += ["-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-device,netdev=n0"]
    for i, disk in enumerate(disks):
        argv += ["-drive", f"id=d{i},file={disk},format=raw,if=none", "-device", f"virtio-blk-device,drive=d{i}"]
    await run(argv, timeout=240)
    return log.read_text(errors="replace")


async def test_probe_boot(default_kernel: Path, tmp_path: Path) -> None:
    console = await _boot(default_kernel, tmp_path / "serial.log", "banger.probe=1")
    assert "BANGER-PROBE-OK" in console, console[-2000:]


ROOT_INIT = """#!/bin/busybox sh
/bin/busybox echo ROOT-INIT-RUNNING
[ -f /lib/modules/$(/bin/busybox uname -r)/modules.dep ] && /bin/busybox echo MODULES-MOUNTED
/bin/busybox modprobe overlay && /bin/busybox grep -q overlay /proc/filesystems && /bin/busybox echo MODPROBE-OK
/bin/busybox ip -4 addr show dev eth0 | /bin/busybox grep -q 172.30.0.9/24 && /bin/busybox echo IP-OK
/bin/busybox poweroff -f
"""


async def test_boot_busybox_root(default_kernel: Path, tmp_path: Path) -> None:
    tree = tmp_path / "root"
    for d in ("bin", "sbin", "proc", "sys", "dev", "lib/modules"):
        (tree / d).mkdir(parents=True)
    busybox = cpio.read_cpio(gzip.decompress((default_kernel / "initrd.img").read_bytes()))
    (tree / "bin/busybox").write_bytes(next(e.data for e in busybox if e.name == "bin/busybox"))
    (tree / "bin/busybox").chmod(0o755)
    (tree / "sbin/init").write_text(ROOT_INIT)
    (tree / "sbin/init").chmod(0o755)
    await ext4.make_from_tree(tree, tmp_path / "root.ext4", 64 << 20)
    shutil.copyfile(default_kernel / "modules.ext4", tmp_path / "modules.ext4")
    console = await _boot(default_kernel, tmp_path / "serial.log",
                          "root=/dev/vda ro ip=172.30.0.9::172.30.0.1:255.255.255.0:guest:eth0:off "
                          "banger.modules=/dev/vdb",
                          tmp_path / "root.ext4", tmp_path / "modules.ext4", nic=True)
    for line in ("ROOT-INIT-RUNNING", "MODULES-MOUNTED", "MODPROBE-OK", "IP-OK"):
        assert line in console, console[-3000:]
