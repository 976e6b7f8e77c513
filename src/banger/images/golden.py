"""The golden image: a Debian bookworm dev sandbox built with mmdebstrap, cached by a hash of its inputs.

Recipe (bump :data:`RECIPE_VERSION` whenever the steps below change, so caches rebuild):

1. ``mmdebstrap --variant=minbase`` with :data:`PACKAGES` from the configured mirror (docs, man pages
   and translations excluded);
2. the static files of ``images/files`` placed per :data:`PLACEMENT` (sshd drop-in, fstab, the network
   and host-key units, mise activation, banger-agent's source and unit); banger-agent compiled in the tree
   (``chroot TREE gcc -static``); units enabled and masked with ``systemctl --root``;
3. per-VM identity removed: ssh host keys (each VM's comes from the daemon on its config disk),
   ``/etc/hostname`` (the kernel's
   ``systemd.hostname=`` names the VM), ``/etc/resolv.conf`` (written from ``banger.dns=``),
   ``/etc/machine-id`` left empty;
4. mise installed from the npm registry's pinned, sha256-checked tarball;
5. ``/root`` moved out into the work seed (and a copy kept at ``/usr/share/banger/work-seed`` for
   bundles); ``/root`` and ``/lib/modules`` stay as empty mountpoints;
6. ``rootfs.ext4`` and ``work-seed.ext4`` made with ``mkfs.ext4 -d`` (sparse, no mount).

The finished images live in ``<cache_dir>/golden/<inputs hash>/`` and are copied to ``dest``; an
unchanged recipe, package list, file set, mirror and mise pin reuse them without running mmdebstrap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from banger.errors import HostError, IntegrityError
from banger.host.ext4 import make_from_tree, size_for_tree
from banger.host.http import download, sha256_file
from banger.host.run import run
from banger.images import agent, rootless
from banger.images.local import copy_sparse, staging
from banger.images.manifest import ROOTFS, WORK_SEED, ImageManifest, read_manifest, utc_now, write_manifest
from banger.images.rootless import Mapper
from banger.images.seed import SEED_COPY, make_seed_image, mark_seeded
from banger.names import validate_name
from banger.progress import Reporter

RECIPE_VERSION = 3
SUITE = "bookworm"
KERNEL_REF = "debian-6.1"
MMDEBSTRAP_TIMEOUT = 1200.0
# mmdebstrap --mode=root bind-mounts /dev nodes and /sys into the tree and unmounts them only when it
# exits normally: in a private mount namespace a killed build leaves no mounts for the cleanup to walk,
# and in its own PID namespace killing it takes apt and dpkg down too (they would hold its pipes open).
PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child")

PACKAGES = (
    # Boot and device handling: without udev + dbus the work disk's dev-vdb.device never appears.
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "procps",
    # Reaching the VM and its network: sshd, `ip` (banger-network), ping, /etc/services & co.
    "openssh-server", "iproute2", "iputils-ping", "netbase", "ca-certificates",
    # The developer's and agent's everyday tools.
    "git", "jq", "curl", "tmux", "sudo", "less", "python3", "build-essential",
    # Containers inside the sandbox (modules come from the kernel's module disk at boot).
    "docker.io",
)  # fmt: skip

DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)

MISE_VERSION = "2026.9.15"
MISE_URL = f"https://registry.npmjs.org/@jdxcode/mise-linux-x64/-/mise-linux-x64-{MISE_VERSION}.tgz"
# sha256 of the tarball; the registry's dist.shasum (sha1 6a47590d...) and sha512 integrity matched it.
MISE_SHA256 = "b51f2463bc4fcdc3b0959b1454792f64be3612e73d856cbca4a062e39e070e74"
MISE_MEMBER = "package/bin/mise"

FILES_DIR = Path(__file__).parent / "files"
# file in images/files -> (path in the guest, mode)
PLACEMENT: dict[str, tuple[str, int]] = {
    "sshd-banger.conf": ("etc/ssh/sshd_config.d/banger.conf", 0o644),
    "fstab": ("etc/fstab", 0o644),
    "banger-network": ("usr/local/sbin/banger-network", 0o755),
    "banger-network.service": ("etc/systemd/system/banger-network.service", 0o644),
    "banger-config": ("usr/local/sbin/banger-config", 0o755),
    "banger-config.service": ("etc/systemd/system/banger-config.service", 0o644),
    "banger-mise.sh": ("etc/profile.d/banger-mise.sh", 0o644),
    "banger-agent.c": (agent.GUEST_SOURCE, 0o644),
    "banger-agent.service": (f"etc/systemd/system/{agent.UNIT}", 0o644),
}

# Docker is socket-activated: dockerd and containerd start on the first `docker` command instead of
# at every boot, which under emulation costs tens of seconds nobody asked for.
ENABLE = (
    agent.UNIT, "banger-network.service", "banger-config.service", "ssh.service",
    "serial-getty@ttyS0.service", "docker.socket",
)  # fmt: skip
# Units that would fight banger-network, wait for a network manager that is not there, or spend a
# short-lived VM's CPU on housekeeping.
MASK = (
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "getty@tty1.service",
    # Loaders for hardware a microVM does not have (DRM, EFI pstore) and configfs nobody mounts: each costs
    # seconds of emulated CPU on a one-vCPU guest's boot.
    "modprobe@drm.service", "modprobe@efi_pstore.service", "systemd-pstore.service",
    "modprobe@configfs.service", "sys-kernel-config.mount",
    # fsckd only relays fsck progress to a console nobody watches; it idles out ~30 s after boot, which in a
    # snapshot template means after the snapshot, so every clone would pay for that exit (~13 MiB each of
    # freshly dirtied memory). systemd-fsck@ only Wants it and checks the disks the same without it.
    "systemd-fsckd.socket", "systemd-fsckd.service",
)  # fmt: skip
DISABLE = ("docker.service", "containerd.service")
IDENTITY_FILES = ("etc/hostname", "etc/resolv.conf")


def sources(mirror: str) -> list[str]:
    """The apt sources: the suite and its updates, plus security when the mirror is a standard layout."""
    mirror = mirror.rstrip("/")
    lines = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
    if mirror.endswith("/debian"):
        lines.append(f"deb {mirror}-security {SUITE}-security main")
    return lines


def _files_digest() -> list[tuple[str, str, str, int]]:
    return [
        (name, guest, hashlib.sha256((FILES_DIR / name).read_bytes()).hexdigest(), mode)
        for name, (guest, mode) in sorted(PLACEMENT.items())
    ]


def inputs_hash(mirror: str, extra_packages: Sequence[str] = ()) -> str:
    """sha256 over everything that decides the build's output: recipe, packages, files, mirror, mise."""
    doc = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "packages": PACKAGES + tuple(extra_packages) if extra_packages else PACKAGES,
        "dpkg": DPKG_EXCLUDES,
        "sources": sources(mirror),
        "files": _files_digest(),
        "enable": ENABLE,
        "disable": DISABLE,
        "mask": MASK,
        "mise": [MISE_VERSION, MISE_SHA256],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def mmdebstrap_argv(tree: Path, mirror: str, extra_packages: Sequence[str] = ()) -> list[str]:
    """The mmdebstrap command line that bootstraps the tree."""
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory"]
    argv += [f"--include={','.join((*PACKAGES, *extra_packages))}", '--aptopt=Acquire::Retries "3"']
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    return [*argv, SUITE, str(tree), *sources(mirror)]


async def fetch_mise(downloads: Path, reporter: Reporter) -> Path:
    """The pinned mise tarball, downloaded once into ``downloads`` and verified by sha256."""
    path = downloads / f"mise-linux-x64-{MISE_VERSION}.tgz"
    if path.is_file() and await asyncio.to_thread(sha256_file, path) == MISE_SHA256:
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    reporter.stage(f"downloading mise {MISE_VERSION}")
    await download(MISE_URL, path, sha256=MISE_SHA256, reporter=reporter)
    return path


def place_files(tree: Path) -> None:
    """Copy images/files into the tree at their guest paths and modes."""
    for name, (guest, mode) in PLACEMENT.items():
        target = tree / guest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FILES_DIR / name, target)
        os.chown(target, 0, 0)
        os.chmod(target, mode)


def strip_identity(tree: Path) -> None:
    """Remove what must differ per VM: host keys, hostname, resolver; empty the machine id."""
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for rel in IDENTITY_FILES:
        (tree / rel).unlink(missing_ok=True)
    (tree / "etc/machine-id").write_text("")


def install_mise(tree: Path, tarball: Path) -> None:
    """Put the mise binary from the npm tarball at /usr/local/bin/mise (root, 0755)."""
    target = tree / "usr/local/bin/mise"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        src = tar.extractfile(MISE_MEMBER)
        if src is None:
            raise IntegrityError(f"{tarball} has no {MISE_MEMBER}", hint="delete it so it is downloaded again")
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    os.chmod(target, 0o755)


def split_root(tree: Path, seed: Path) -> None:
    """Move the tree's /root into ``seed`` (kept as a copy under /usr/share/banger); leave /root empty."""
    root = tree / "root"
    shutil.move(root, seed)
    mark_seeded(seed)
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    (tree / "lib/modules").mkdir(parents=True, exist_ok=True)
    copy = tree / SEED_COPY.lstrip("/")
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(seed, copy, symlinks=True)


async def set_units(tree: Path) -> None:
    """Enable banger's and the sandbox's services, mask the ones that would fight or slow boot."""
    await run(["systemctl", f"--root={tree}", "enable", *ENABLE])
    await run(["systemctl", f"--root={tree}", "disable", *DISABLE])
    await run(["systemctl", f"--root={tree}", "mask", *MASK])


async def installed_packages(tree: Path) -> dict[str, str]:
    """Every package in the tree with its version, for the manifest."""
    fmt = "${Package}\t${Version}\n"
    result = await run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", fmt])
    pairs = (line.split("\t", 1) for line in result.out.splitlines() if "\t" in line)
    return dict(sorted(pairs))


async def compile_agent(tree: Path) -> None:
    """Build banger-agent with the tree's own compiler, so the host needs none and the libc matches."""
    await run(["chroot", str(tree), *agent.compile_argv(f"/{agent.GUEST_SOURCE}", f"/{agent.GUEST_BINARY}")])


async def _customise(tree: Path, seed: Path, mise: Path) -> None:
    await asyncio.to_thread(place_files, tree)
    await compile_agent(tree)
    await asyncio.to_thread(strip_identity, tree)
    await asyncio.to_thread(install_mise, tree, mise)
    await set_units(tree)
    await asyncio.to_thread(split_root, tree, seed)


async def _make_images(stage: Path, tree: Path, seed: Path, reporter: Reporter) -> tuple[str, str]:
    reporter.stage("making rootfs.ext4")
    await make_from_tree(tree, stage / ROOTFS, size_for_tree(tree), label="banger-root")
    reporter.stage("making work-seed.ext4")
    await make_seed_image(seed, stage / WORK_SEED)
    reporter.stage("checksumming images")
    return (
        await asyncio.to_thread(sha256_file, stage / ROOTFS),
        await asyncio.to_thread(sha256_file, stage / WORK_SEED),
    )


AGENT_COPY = "banger-agent"  # the compiled agent, left in the stage for the image cache (OCI imports)


async def _build_tree(stage: Path, mirror: str, mise: Path, reporter: Reporter,
                      extra_packages: Sequence[str]) -> dict[str, Any]:
    """mmdebstrap, customise, make both images in ``stage``; the tree itself is gone afterwards."""
    tree, seed = stage / "tree", stage / "seed"
    reporter.stage(f"bootstrapping debian {SUITE} (mmdebstrap)")
    await run([*PRIVATE_MOUNTS, *mmdebstrap_argv(tree, mirror, extra_packages)], timeout=MMDEBSTRAP_TIMEOUT)
    reporter.stage("customising the tree")
    await _customise(tree, seed, mise)
    await asyncio.to_thread(shutil.copyfile, tree / agent.GUEST_BINARY, stage / AGENT_COPY)
    packages = await installed_packages(tree)
    rootfs_sha, seed_sha = await _make_images(stage, tree, seed, reporter)
    await asyncio.to_thread(shutil.rmtree, tree)
    await asyncio.to_thread(shutil.rmtree, seed)
    return {"installed": packages, "rootfs_sha256": rootfs_sha, "work_seed_sha256": seed_sha}


async def build_task(args: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """:func:`_build_tree` as root of the owner's user namespace (banger.images.rootless)."""
    stage = Path(args["stage"])
    try:
        built = await _build_tree(stage, args["mirror"], Path(args["mise"]), reporter, args["extra_packages"])
        await asyncio.to_thread(rootless.give_back, stage / ROOTFS, stage / WORK_SEED, stage / AGENT_COPY)
    finally:  # what only the namespace's root may delete
        for rel in ("tree", "seed"):
            await asyncio.to_thread(shutil.rmtree, stage / rel, True)
    return built


async def _build_entry(entry: Path, mirror: str, cache_dir: Path, reporter: Reporter,
                       extra_packages: Sequence[str] = (), mapper: Mapper | None = None) -> None:
    started = time.monotonic()
    mise = await fetch_mise(cache_dir / "downloads", reporter)
    async with staging(entry) as stage:
        if os.geteuid() == 0:
            built = await _build_tree(stage, mirror, mise, reporter, extra_packages)
        else:
            built = await _build_as_owner(stage, mirror, mise, reporter, extra_packages, mapper)
        await asyncio.to_thread(agent.keep_binary, stage / AGENT_COPY, cache_dir)  # for OCI imports
        (stage / AGENT_COPY).unlink()
        extra = {
            "suite": SUITE,
            "mirror": mirror,
            "packages": [*PACKAGES, *extra_packages],
            "installed": built["installed"],
            "inputs_hash": entry.name,
            "recipe_version": RECIPE_VERSION,
            "mise_version": MISE_VERSION,
            "work_seed_sha256": built["work_seed_sha256"],
            "built_at": utc_now(),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        write_manifest(stage, _manifest("debian-bookworm", stage, built["rootfs_sha256"], extra))


async def _build_as_owner(stage: Path, mirror: str, mise: Path, reporter: Reporter,
                          extra_packages: Sequence[str], mapper: Mapper | None) -> dict[str, Any]:
    """The build as root of the owner's user namespace: mmdebstrap's root mode works there (it falls back
    to bind mounts for /dev and /sys), and every file owner in the tree comes out as Debian made it."""
    if mapper is None:
        raise HostError(
            "building the golden image as a normal user needs a user namespace mapper",
            hint="run the build through banger's system install (bangerd-root maps the namespace), or as root",
        )
    args = {"stage": str(stage), "mirror": mirror, "mise": str(mise), "extra_packages": list(extra_packages)}
    try:
        return dict(await rootless.in_userns("golden_build", args, mapper, reporter,
                                             timeout=MMDEBSTRAP_TIMEOUT * 2))
    except BaseException:
        for rel in ("tree", "seed"):  # owned by subordinate ids: only the namespace's root may delete them
            await rootless.remove_quietly(stage / rel, mapper)
        raise


def _manifest(name: str, image_dir: Path, rootfs_sha: str, extra: dict[str, object]) -> ImageManifest:
    return ImageManifest(
        name=name,
        distro="debian",
        arch="x86_64",
        kernel_ref=KERNEL_REF,
        source="build",
        rootfs_size=(image_dir / ROOTFS).stat().st_size,
        rootfs_sha256=rootfs_sha,
        work_seed_size=(image_dir / WORK_SEED).stat().st_size,
        extra=extra,
    )


async def _drop(path: Path) -> None:
    if path.exists():
        trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex[:8]}")
        os.replace(path, trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)


async def _prune(keep: Path) -> None:
    """Drop older cached builds: each is over a gigabyte, and only the current recipe is useful."""
    for other in keep.parent.iterdir():
        if other != keep and not other.name.startswith(".") and other.is_dir():
            await _drop(other)


def _cached(entry: Path) -> bool:
    return all((entry / f).is_file() for f in (ROOTFS, WORK_SEED, "manifest.json"))


async def _install(entry: Path, dest: Path, name: str, reporter: Reporter) -> ImageManifest:
    reporter.stage(f"installing image {name}")
    cached = read_manifest(entry)
    async with staging(dest) as stage:
        await copy_sparse(entry / ROOTFS, stage / ROOTFS)
        await copy_sparse(entry / WORK_SEED, stage / WORK_SEED)
        manifest = cached.model_copy(update={"name": name, "created_at": utc_now()})
        write_manifest(stage, manifest)
    return manifest


async def build_golden(
    dest: Path,
    *,
    name: str,
    mirror: str,
    cache_dir: Path,
    reporter: Reporter,
    force: bool = False,
    extra_packages: Sequence[str] = (),
    mapper: Mapper | None = None,
) -> ImageManifest:
    """Build (or reuse from ``cache_dir``) the golden image and write it to ``dest``, which must not exist.

    ``dest`` receives ``rootfs.ext4``, ``work-seed.ext4`` and ``manifest.json``; ``force`` rebuilds even
    when a cached build with the same inputs exists. Nothing is left at ``dest`` on failure.
    ``extra_packages`` makes a variant (e.g. a KVM host with qemu-system-x86 for the nested test tier); give
    it a ``cache_dir`` of its own, as a build prunes the other builds in its cache. As a normal user the
    build runs in a user namespace that ``mapper`` maps (the privileged seam's ``map_userns``).
    """
    validate_name("image", name)
    entry = cache_dir / "golden" / inputs_hash(mirror, extra_packages)
    if force or not _cached(entry):
        await _drop(entry)
    if _cached(entry):
        reporter.log(f"reusing cached golden build {entry.name[:12]} (inputs unchanged)")
    else:
        try:
            await _build_entry(entry, mirror, cache_dir, reporter, extra_packages, mapper)
        except HostError as exc:
            exc.hint = exc.hint or f"check that the Debian mirror {mirror} is reachable and complete"
            raise
        await _prune(entry)
    return await _install(entry, dest, name, reporter)
