"""``banger image pull``: a container image from an OCI registry turned into a bootable banger image.

Steps: resolve the reference to its linux/amd64 manifest, fetch config and layers into the blob cache,
flatten the layers into a staging tree, add the boot glue (:mod:`banger.images.oci_boot`), split the
image's ``/root`` off as the work seed, and build ``rootfs.ext4`` + ``work-seed.ext4`` + ``manifest.json``.
Everything is staged in a hidden sibling of ``dest`` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from banger.errors import AlreadyExists, HostError, InvalidArgument
from banger.host.ext4 import make_from_tree, size_for_tree
from banger.host.http import sha256_file
from banger.images import agent, rootless
from banger.images.manifest import ROOTFS, WORK_SEED, ImageManifest, write_manifest
from banger.images.oci_boot import BootPlan, exists, inside, install_glue
from banger.images.oci_layers import Budget, apply_layer
from banger.images.oci_registry import BlobCache, ImageManifestRef, RegistryClient, parse_reference
from banger.images.rootless import Mapper
from banger.images.seed import mark_seeded
from banger.progress import Reporter
from banger.threads import in_thread

T = TypeVar("T")


class _Offset:
    """Forwards progress with a running base, so several blobs read as one byte count."""

    def __init__(self, reporter: Reporter, base: int, total: int):
        self.reporter, self.base, self.total = reporter, base, total

    def stage(self, name: str) -> None:
        self.reporter.stage(name)

    def progress(self, done: int, total: int | None = None) -> None:
        self.reporter.progress(self.base + done, self.total)

    def log(self, message: str) -> None:
        self.reporter.log(message)

    def note(self, message: str) -> None:
        self.reporter.note(message)


async def pull_oci(
    ref: str,
    dest: Path,
    *,
    cache_dir: Path,
    reporter: Reporter,
    insecure: bool = False,
    kernel_ref: str = "debian-6.1",
    mapper: Mapper | None = None,
) -> ImageManifest:
    """Pull ``ref`` into the image directory ``dest`` (which must not exist) and return its manifest.

    As root the layers are flattened here; otherwise in a user namespace that ``mapper`` maps (the
    privileged seam's ``map_userns``), so the image's file owners survive either way."""
    parsed = parse_reference(ref, insecure=insecure)
    if os.path.lexists(dest):
        raise AlreadyExists(f"{dest} already exists", hint="remove the image first or pick another name")
    staging = dest.with_name(f".{dest.name}.pull-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    await rootless.remove_quietly(staging, mapper)  # an interrupted pull's, owned by subordinate ids
    staging.mkdir(parents=True)
    try:
        cache = BlobCache(cache_dir)
        async with RegistryClient(parsed, cache) as registry:
            reporter.stage(f"resolving {parsed}")
            image = await registry.resolve()
            blobs = await fetch_blobs(registry, image, reporter)
        config = _image_config(blobs[0])
        agent_binary = await agent.host_binary(cache_dir, reporter)
        digests = [d.digest for d in image.layers]
        if os.geteuid() == 0:
            manifest = await build(staging, digests, blobs[1:], reporter, name=dest.name, kernel_ref=kernel_ref,
                                   agent_binary=agent_binary)
        else:  # the owner: layer owners and modes kept inside its user namespace
            manifest = await _build_as_owner(staging, digests, blobs[1:], reporter, name=dest.name,
                                             kernel_ref=kernel_ref, agent_binary=agent_binary, mapper=mapper)
        manifest.extra["oci"] = _oci_facts(str(parsed), image, config)
        write_manifest(staging / "out", manifest)
        os.rename(staging / "out", dest)
        return manifest
    finally:
        await in_thread(shutil.rmtree, staging, True)
        await rootless.remove_quietly(staging, mapper)  # a failed flatten's files, owned by subordinate ids


async def _build_as_owner(staging: Path, digests: list[str], layers: list[Path], reporter: Reporter, *,
                          name: str, kernel_ref: str, agent_binary: Path | None, mapper: Mapper | None
                          ) -> ImageManifest:
    if mapper is None:
        raise HostError("pulling an OCI image as a normal user needs a user namespace mapper",
                        hint="run banger through its system install (bangerd-root maps the namespace)")
    args = {"staging": str(staging), "digests": digests, "layers": [str(p) for p in layers], "name": name,
            "kernel_ref": kernel_ref, "agent_binary": str(agent_binary) if agent_binary else None}
    result = await rootless.in_userns("oci_build", args, mapper, reporter)
    return ImageManifest.model_validate(result)


async def build_task(args: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """:func:`build` as root of the owner's user namespace (banger.images.rootless); ``out`` handed back."""
    staging = Path(args["staging"])
    try:
        manifest = await build(staging, list(args["digests"]), [Path(p) for p in args["layers"]], reporter,
                               name=args["name"], kernel_ref=args["kernel_ref"],
                               agent_binary=Path(args["agent_binary"]) if args["agent_binary"] else None)
        await in_thread(rootless.give_back, staging / "out")
    finally:  # what only the namespace's root may delete
        for rel in ("tree", "seed"):
            await in_thread(shutil.rmtree, staging / rel, True)
    return manifest.model_dump(mode="json")


async def fetch_blobs(registry: RegistryClient, image: ImageManifestRef, reporter: Reporter) -> list[Path]:
    """Config then layers, from the cache or the registry; returns their cached paths in that order."""
    wanted = [image.config, *image.layers]
    missing = [d for d in wanted if not registry.cache.has(d.digest)]
    total = sum(d.size for d in missing)
    reporter.stage(f"downloading {len(missing)} of {len(wanted)} blobs ({total} bytes)")
    paths, base = [], 0
    for desc in wanted:
        if registry.cache.has(desc.digest):
            reporter.log(f"blob {desc.digest} reused from the cache")
        paths.append(await registry.fetch_blob(desc, _Offset(reporter, base, total)))
        base += desc.size if desc in missing else 0
    return paths


def _image_config(path: Path) -> dict[str, Any]:
    """The image config JSON; refuses images not built for linux/amd64."""
    try:
        config = json.loads(path.read_bytes())
    except ValueError as exc:
        raise InvalidArgument(f"the image config {path.name} is not valid JSON") from exc
    if config.get("os", "linux") != "linux" or config.get("architecture", "amd64") != "amd64":
        raise InvalidArgument(
            f"the image is built for {config.get('os')}/{config.get('architecture')}, not linux/amd64",
            hint="banger guests are x86_64: pull the image's linux/amd64 variant",
        )
    return dict(config)


async def build(
    staging: Path, digests: list[str], layers: list[Path], reporter: Reporter, *, name: str, kernel_ref: str,
    agent_binary: Path | None = None,
) -> ImageManifest:
    """Flatten ``layers`` (whose digests are ``digests``) into ``staging/tree``, add the glue (and
    ``agent_binary``, a static banger-agent), and write the two disks to ``staging/out``."""
    tree, seed, out = staging / "tree", staging / "seed", staging / "out"
    tree.mkdir(mode=0o755)
    out.mkdir()
    reporter.stage(f"unpacking {len(layers)} layers")
    budget = Budget()
    for i, (digest, blob) in enumerate(zip(digests, layers, strict=True)):
        await in_thread(partial(apply_layer, tree, blob, layer=digest, reporter=reporter, budget=budget))
        reporter.progress(i + 1, len(layers))
    reporter.stage("adding banger boot glue")
    plan = await in_thread(install_glue, tree, reporter, agent_binary)
    await in_thread(_split_work_seed, tree, seed)
    reporter.stage(f"building {ROOTFS}")
    await make_from_tree(tree, out / ROOTFS, await in_thread(size_for_tree, tree), label="banger-root")
    reporter.stage(f"building {WORK_SEED}")
    await make_from_tree(seed, out / WORK_SEED, await in_thread(size_for_tree, seed), label="banger-work")
    reporter.stage(f"checksumming {ROOTFS}")
    return ImageManifest(
        name=name,
        distro=_distro(tree),
        kernel_ref=kernel_ref,
        source="oci",
        rootfs_size=(out / ROOTFS).stat().st_size,
        rootfs_sha256=await in_thread(sha256_file, out / ROOTFS),
        work_seed_size=(out / WORK_SEED).stat().st_size,
        extra=_boot_facts(plan) | {"agent": agent_binary is not None},
    )


def _split_work_seed(tree: Path, seed: Path) -> None:
    """Move the image's ``/root`` out as the work seed, leaving an empty 0700 mount point behind."""
    root = tree / "root"
    if root.is_dir() and not root.is_symlink():
        os.rename(root, seed)
    else:
        root.unlink(missing_ok=True)
        seed.mkdir(mode=0o700)
    mark_seeded(seed)
    root.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.lchown(root, 0, 0)


def _distro(tree: Path) -> str:
    """``ID`` from the image's os-release, or ``"unknown"``."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = inside(tree, rel)
        if exists(tree, rel) and path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("ID="):
                    return line[3:].strip().strip("\"'") or "unknown"
    return "unknown"


def _boot_facts(plan: BootPlan) -> dict[str, Any]:
    return {"cmdline_init": plan.init, "init": "systemd" if plan.systemd else "banger-init", "notes": plan.notes,
            "sshd": plan.sshd}


def _oci_facts(reference: str, image: ImageManifestRef, config: dict[str, Any]) -> dict[str, Any]:
    """What ``extra["oci"]`` records: digests (the cache-prune keep list) and the container's run config."""
    run = config.get("config") or {}
    return {
        "reference": reference,
        "manifest_digest": image.digest,
        "index_digest": image.index_digest,
        "config_digest": image.config.digest,
        "layers": [d.digest for d in image.layers],
        "blobs": image.digests,
        "entrypoint": run.get("Entrypoint"),
        "cmd": run.get("Cmd"),
        "env": run.get("Env"),
        "working_dir": run.get("WorkingDir"),
        "user": run.get("User"),
    }
