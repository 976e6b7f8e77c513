"""``pull_oci`` against Debian's real docker-registry on loopback, fed hand-made OCI layouts through skopeo.

Every result is checked inside the produced ext4 with debugfs: owners, modes, whiteouts, boot glue.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import zstandard

from banger.errors import IntegrityError
from banger.host.ext4 import debugfs
from banger.host.run import run_sync, spawn_detached
from banger.images.manifest import read_manifest
from banger.images.oci_pull import pull_oci
from banger.images.oci_registry import BlobCache, prune_cache, referenced_digests
from banger.progress import RecordingReporter
from banger.testing.artifacts import install_image
from banger.testing.daemon import Home
from banger.testing.netns import NetNS
from banger.testing.system import SystemInstall, made_user

OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: list[tuple]) -> bytes:
    """A tar of (name, type, payload, mode, uid, gid) entries; payload is bytes or a link target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode, uid, gid in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1_700_000_000
            if kind == tarfile.REGTYPE:
                info.size = len(payload)
            elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload
            tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def f(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0, gid: int = 0) -> tuple:
    return (name, tarfile.REGTYPE, data, mode, uid, gid)


def d(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> tuple:
    return (name, tarfile.DIRTYPE, b"", mode, uid, gid)


def sym(name: str, target: str) -> tuple:
    return (name, tarfile.SYMTYPE, target, 0o777, 0, 0)


class OciLayout:
    """An OCI image layout on disk, written by hand (blobs, index.json, oci-layout)."""

    def __init__(self, path: Path):
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.index: list[dict] = []

    def blob(self, data: bytes, media_type: str, **extra: object) -> dict:
        (self.path / "blobs" / "sha256" / sha(data).split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}

    def image(self, layers: list[tuple[bytes, str]], arch: str = "amd64") -> dict:
        """Layers as (uncompressed tar, media type); returns the manifest descriptor with its platform."""
        descs = [self.blob(_compress(tar, mt), mt) for tar, mt in layers]
        config = {"architecture": arch, "os": "linux",
                  "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/root"},
                  "rootfs": {"type": "layers", "diff_ids": [sha(tar) for tar, _ in layers]}}
        cfg = self.blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        media_type = "application/vnd.oci.image.manifest.v1+json"
        manifest = {"schemaVersion": 2, "mediaType": media_type, "config": cfg, "layers": descs}
        return self.blob(json.dumps(manifest).encode(), media_type,
                         platform={"architecture": arch, "os": "linux"})

    def image_index(self, manifests: list[dict]) -> dict:
        media_type = "application/vnd.oci.image.index.v1+json"
        body = {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}
        return self.blob(json.dumps(body).encode(), media_type)

    def tag(self, desc: dict, tag: str) -> None:
        entry = {k: v for k, v in desc.items() if k != "platform"}
        self.index.append({**entry, "annotations": {"org.opencontainers.image.ref.name": tag}})
        body = {"schemaVersion": 2, "manifests": self.index}
        (self.path / "index.json").write_text(json.dumps(body))


def _compress(tar: bytes, media_type: str) -> bytes:
    if media_type.endswith("+gzip"):
        return gzip.compress(tar)
    if media_type.endswith("+zstd"):
        return zstandard.ZstdCompressor().compress(tar)
    return tar


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT"
    log: Path

    def push(self, layout: OciLayout, tag: str, name: str, *, all_platforms: bool = False) -> str:
        argv = ["skopeo", "copy", "--dest-tls-verify=false", *(["--all"] if all_platforms else []),
                f"oci:{layout.path}:{tag}", f"docker://{self.host}/{name}:{tag}"]
        run_sync(argv, timeout=120)
        return f"{self.host}/{name}:{tag}"

    def blob_gets(self) -> int:
        return sum(1 for line in self.log.read_text().splitlines() if '"GET /v2/' in line and "/blobs/" in line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = base / "registry.log"
    pid = spawn_detached(["docker-registry", "serve", str(config)], log_path=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"registry did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", log)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


BUSYBOX = Path("/bin/busybox").read_bytes()


def base_layer() -> bytes:
    return tar_bytes([
        d("bin/"), f("bin/busybox", BUSYBOX, 0o755), sym("bin/sh", "busybox"),
        d("etc/"), f("etc/os-release", b'ID="testos"\nVERSION_ID=1\n'), f("etc/fstab", b"# UNCONFIGURED\n"),
        d("etc/ssh/"), f("etc/ssh/sshd_config", b"Include /etc/ssh/sshd_config.d/*.conf\n"),
        f("etc/ssh/ssh_host_ed25519_key", b"baked-in secret", 0o600),
        d("usr/"), d("usr/sbin/"), f("usr/sbin/sshd", b"#!/bin/sh\n", 0o755), sym("sbin", "usr/sbin"),
        d("home/"), d("home/dev", 0o750, 1000, 1000), f("home/dev/notes", b"mine", 0o600, 1000, 1000),
        f("usr/bin/su", b"suid", 0o4755, 0, 0),
        d("root/", 0o700), f("root/.profile", b"echo hi\n"),
        d("opt/"), d("opt/app/"), f("opt/app/old.conf"), f("opt/app/removed"), f("opt/keep"),
    ])


def change_layer() -> bytes:
    return tar_bytes([
        f("opt/.wh.keep"), f("opt/app/.wh..wh..opq", b""), f("opt/app/new.conf", b"v2"),
        f("etc/motd", b"from layer two\n", 0o644, 0, 0),
    ])


def replaced_target(factory: pytest.TempPathFactory) -> Path:
    """A host directory (outside any image) with a ``b`` inside, mode 0700, owned by root."""
    host = factory.getbasetemp() / "replaced-target"
    (host / "b").mkdir(parents=True, exist_ok=True)
    os.chmod(host / "b", 0o700)
    return host


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every test image, pushed once: name -> reference."""
    out = {}
    lay = OciLayout(tmp_path_factory.mktemp("layout") / "oci")
    basic = lay.image([(base_layer(), OCI_LAYER_GZ), (change_layer(), OCI_LAYER_ZSTD)])
    lay.tag(basic, "basic")
    out["basic"] = registry.push(lay, "basic", "test/basic")
    systemd = lay.image([(base_layer(), OCI_LAYER_GZ), (tar_bytes([
        d("lib/"), d("lib/systemd/"), f("lib/systemd/systemd", b"ELF", 0o755),
        d("lib/systemd/system/"), f("lib/systemd/system/ssh.service", b"[Service]\n"),
    ]), OCI_LAYER)])
    lay.tag(systemd, "systemd")
    out["systemd"] = registry.push(lay, "systemd", "test/systemd")
    hostile = lay.image([(base_layer(), OCI_LAYER_GZ), (tar_bytes([
        f("etc/innocent", b"ok"), sym("etc/escape", "../../../../../../tmp"), f("etc/escape/pwned", b"gotcha"),
    ]), OCI_LAYER_GZ)])
    lay.tag(hostile, "hostile")
    out["hostile"] = registry.push(lay, "hostile", "test/hostile")
    # A directory recorded early, then its parent replaced by a symlink to a host directory that has a `b`:
    # the deferred chmod/chown of a/b must not land on the host's b (it once made it 0777, uid 4242).
    host = replaced_target(tmp_path_factory)
    replaced = lay.image([(base_layer(), OCI_LAYER_GZ), (tar_bytes([
        d("a/"), d("a/b/", 0o777, 4242, 4242), sym("a", str(host)),
    ]), OCI_LAYER_GZ)])
    lay.tag(replaced, "replaced")
    out["replaced"] = registry.push(lay, "replaced", "test/replaced")
    arm = lay.image([(base_layer(), OCI_LAYER_GZ), (tar_bytes([f("etc/arch", b"arm64")]), OCI_LAYER_GZ)], "arm64")
    amd = lay.image([(base_layer(), OCI_LAYER_GZ), (tar_bytes([f("etc/arch", b"amd64")]), OCI_LAYER_GZ)])
    lay.tag(lay.image_index([arm, amd]), "multi")
    out["multi"] = registry.push(lay, "multi", "test/multi", all_platforms=True)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


async def stat_of(image: Path, path: str) -> str:
    return await debugfs(image, f"stat {path}")


async def test_pull_builds_a_bootable_image(pushed: dict[str, str], cache_dir: Path, tmp_path: Path) -> None:
    rep = RecordingReporter()
    dest = tmp_path / "images" / "basic"
    manifest = await pull_oci(pushed["basic"], dest, cache_dir=cache_dir, reporter=rep)
    assert sorted(os.listdir(dest)) == ["manifest.json", "rootfs.ext4", "work-seed.ext4"]
    assert sorted(os.listdir(dest.parent)) == ["basic"]
    assert read_manifest(dest) == manifest
    assert (manifest.source, manifest.distro, manifest.kernel_ref) == ("oci", "testos", "debian-6.1")
    assert manifest.extra["cmdline_init"] == "/sbin/banger-init"
    assert manifest.extra["oci"]["cmd"] == ["/bin/sh"] and len(manifest.extra["oci"]["layers"]) == 2
    rootfs = dest / "rootfs.ext4"
    assert manifest.rootfs_size == rootfs.stat().st_size
    assert manifest.rootfs_sha256 == hashlib.sha256(rootfs.read_bytes()).hexdigest()

    notes = await stat_of(rootfs, "/home/dev/notes")
    assert "User:  1000   Group:  1000" in notes and "Mode:  0600" in notes
    assert "Mode:  04755" in await stat_of(rootfs, "/usr/bin/su")
    assert "Mode:  0750" in await stat_of(rootfs, "/home/dev")
    listing = await debugfs(rootfs, "ls -l /opt", "ls -l /opt/app", "ls -l /root")
    assert "keep" not in listing and "old.conf" not in listing and "removed" not in listing
    assert "new.conf" in listing and ".profile" not in listing and ".wh." not in listing
    init = await debugfs(rootfs, "stat /usr/sbin/banger-init", "cat /usr/sbin/banger-init")
    assert "Mode:  0755" in init and "banger-init: PID 1" in init
    assert "Fast link dest: \"/sbin/banger-init\"" in await stat_of(rootfs, "/usr/sbin/init")
    assert "/dev/vdb /root ext4" in await debugfs(rootfs, "cat /etc/fstab")
    ssh = await debugfs(rootfs, "ls /etc/ssh", "ls /etc/ssh/sshd_config.d")
    assert "ssh_host_ed25519_key" not in ssh and "banger.conf" in ssh
    assert "from layer two" in await debugfs(rootfs, "cat /etc/motd")
    seed = await debugfs(dest / "work-seed.ext4", "cat /.profile")
    assert "echo hi" in seed
    assert any("removed baked-in SSH host key" in line for line in rep.lines)


async def test_second_pull_reuses_cached_blobs(
    pushed: dict[str, str], registry: Registry, cache_dir: Path, tmp_path: Path
) -> None:
    await pull_oci(pushed["basic"], tmp_path / "first", cache_dir=cache_dir, reporter=RecordingReporter())
    before = registry.blob_gets()
    assert before >= 3  # the access log does record blob downloads
    rep = RecordingReporter()
    again = await pull_oci(pushed["basic"], tmp_path / "again", cache_dir=cache_dir, reporter=rep)
    assert registry.blob_gets() == before
    reused = [line for line in rep.lines if "reused from the cache" in line]
    assert len(reused) == 3  # config + 2 layers
    assert any(s.startswith("downloading 0 of 3 blobs") for s in rep.stages)
    assert all(BlobCache(cache_dir).has(dg) for dg in again.extra["oci"]["blobs"])


async def test_systemd_image_gets_units(pushed: dict[str, str], cache_dir: Path, tmp_path: Path) -> None:
    manifest = await pull_oci(pushed["systemd"], tmp_path / "sd", cache_dir=cache_dir, reporter=RecordingReporter())
    assert manifest.extra["cmdline_init"] == "/lib/systemd/systemd"
    assert manifest.extra["init"] == "systemd"
    rootfs = tmp_path / "sd" / "rootfs.ext4"
    wants = await debugfs(rootfs, "ls /etc/systemd/system/multi-user.target.wants",
                          "ls /etc/systemd/system/ssh.service.wants", "ls /usr/local/sbin")
    assert "banger-network.service" in wants and "ssh.service" in wants
    assert "banger-config.service" in wants and "banger-network" in wants and "banger-config " in wants
    assert "Fast link dest: \"/lib/systemd/systemd\"" in await stat_of(rootfs, "/usr/sbin/init")
    assert "banger-init" not in await debugfs(rootfs, "ls /usr/sbin")
    agent = await debugfs(rootfs, "ls /etc/systemd/system/sysinit.target.wants", "stat /usr/local/sbin/banger-agent")
    assert "banger-agent.service" in agent and "Mode:  0755" in agent and manifest.extra["agent"] is True


async def test_hostile_layer_fails_and_leaves_nothing(
    pushed: dict[str, str], cache_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "images" / "evil"
    with pytest.raises(IntegrityError, match="etc/escape/pwned") as err:
        await pull_oci(pushed["hostile"], dest, cache_dir=cache_dir, reporter=RecordingReporter())
    assert "outside the root" in str(err.value)
    assert os.listdir(tmp_path / "images") == []
    assert not Path("/tmp/pwned").exists()


async def test_a_layer_cannot_act_through_a_replaced_path(
    pushed: dict[str, str], cache_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    host = replaced_target(tmp_path_factory)
    await pull_oci(pushed["replaced"], tmp_path / "r", cache_dir=cache_dir, reporter=RecordingReporter())
    st = (host / "b").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 0, 0), "a host directory was changed"


async def test_manifest_list_picks_amd64(pushed: dict[str, str], cache_dir: Path, tmp_path: Path) -> None:
    manifest = await pull_oci(pushed["multi"], tmp_path / "m", cache_dir=cache_dir, reporter=RecordingReporter())
    assert manifest.extra["oci"]["index_digest"]
    assert "amd64" in await debugfs(tmp_path / "m" / "rootfs.ext4", "cat /etc/arch")


async def test_prune_dry_run_then_prune(pushed: dict[str, str], cache_dir: Path, tmp_path: Path) -> None:
    kept = await pull_oci(pushed["basic"], tmp_path / "kept", cache_dir=cache_dir, reporter=RecordingReporter())
    other = await pull_oci(pushed["multi"], tmp_path / "other", cache_dir=cache_dir, reporter=RecordingReporter())
    keep = referenced_digests([kept.extra])
    cache = BlobCache(cache_dir)
    before = sorted(p.name for p in cache.root.iterdir())
    planned = prune_cache(cache_dir, keep, dry_run=True)
    assert sorted(p.name for p in cache.root.iterdir()) == before
    names = {p.name for p, _ in planned}
    assert other.extra["oci"]["index_digest"].split(":")[1] in names
    assert not names & {k.split(":")[1] for k in keep}
    assert all(size == p.stat().st_size for p, size in planned)
    assert prune_cache(cache_dir, keep) == planned
    assert sorted(p.name for p in cache.root.iterdir()) == sorted(k.split(":")[1] for k in keep)


APPLETS = ("sh", "mount", "umount", "mkdir", "grep", "ip", "sed", "tr", "cat", "sleep", "kill", "sync", "chmod",
           "modprobe", "poweroff", "reboot", "echo", "ls", "id", "uname", "rm", "ln", "hostname", "head", "cut")


async def test_an_import_without_sshd_boots_and_runs_commands_through_its_agent(
    registry: Registry, vm_home: Home, tmp_path: Path
) -> None:
    """A real boot of an OCI import: busybox only (no sshd, no libc, no compiler). `image pull` gave it the
    static banger-agent, banger-init started it, and `vm run` gets output and exit status through it."""
    lay = OciLayout(tmp_path / "oci")
    layer = tar_bytes([d("bin/"), f("bin/busybox", BUSYBOX, 0o755), *(sym(f"bin/{a}", "busybox") for a in APPLETS),
                       d("etc/"), f("etc/os-release", b'ID="busyos"\n'), d("root/", 0o700)])
    lay.tag(lay.image([(layer, OCI_LAYER_GZ)]), "boot")
    ref = registry.push(lay, "boot", "test/boot")
    rep = RecordingReporter()
    image_dir = tmp_path / "images" / "busy"
    manifest = await pull_oci(ref, image_dir, cache_dir=tmp_path / "cache", reporter=rep)
    assert manifest.extra["agent"] is True and manifest.extra["sshd"] is False
    assert "Mode:  0755" in await stat_of(image_dir / "rootfs.ext4", "/usr/local/sbin/banger-agent")

    install_image(vm_home.layout, image_dir, name="busy")
    proc = vm_home.cli("vm", "run", "--rm", "--name", "busy1", "--image", "busy", "--",
                       "sh", "-c", "echo from-busybox; uname -s; id -u; exit 3", timeout=600)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == ["from-busybox", "Linux", "0"]
    assert json.loads(vm_home.cli("vm", "list", "--json", check=True).stdout) == []


def _not_owners(root: Path, uid: int) -> list[str]:
    """Paths under ``root`` that are not ``uid``'s (what a user-namespace build could leave behind)."""
    return [str(p) for p in (root, *root.rglob("*")) if p.lstat().st_uid != uid]


def test_the_owner_pulls_through_its_system_install_and_file_owners_survive(pushed: dict[str, str]) -> None:
    """As the owner (bangerd started as its unit says: no new privileges, no capabilities), a pull flattens
    the layers as root of a user namespace bangerd-root maps onto the owner's subordinate ids: uid 1000,
    modes and setuid bits come out as the image has them, and what the owner gets back is all its own.
    A hostile image fails the same way as under root, with nothing left that the owner could not remove."""
    with made_user() as owner, NetNS() as ns:
        sysi = SystemInstall(owner.pw_name, netns=ns.name)
        try:
            sysi.install()
            sysi.start_helper()
            sysi.start_owner_daemon(netns=False)  # the registry listens on the host's loopback
            pulled = sysi.cli("image", "pull", pushed["basic"], "--name", "basic", "--insecure", netns=False,
                              timeout=600)
            assert pulled.returncode == 0, pulled.stderr
            inst = sysi.inst
            rootfs = inst.state_dir / "images/basic/rootfs.ext4"
            notes = asyncio.run(stat_of(rootfs, "/home/dev/notes"))
            assert "User:  1000   Group:  1000" in notes and "Mode:  0600" in notes, notes
            su = asyncio.run(stat_of(rootfs, "/usr/bin/su"))
            assert "Mode:  04755" in su and "User:     0   Group:     0" in su, su
            assert "User:     0   Group:     0" in asyncio.run(stat_of(rootfs, "/etc/motd"))

            hostile = sysi.cli("image", "pull", pushed["hostile"], "--name", "hostile", "--insecure",
                               netns=False, timeout=600)
            assert hostile.returncode != 0 and "outside the root" in hostile.stderr, hostile.stderr
            assert sorted(os.listdir(inst.state_dir / "images")) == ["basic"]
            sysi.stop(sysi.daemon)
            assert _not_owners(inst.state_dir, owner.pw_uid) == []
            assert _not_owners(inst.cache_dir, owner.pw_uid) == []
        except BaseException:
            print(sysi.logs())
            raise
        finally:
            sysi.close()
