"""ImageService: the local image store (build, pull, export, register, promote, delete, cache prune).

Every producer (golden build, bundle import, OCI pull, register) writes a complete image directory into a
private work directory; the image's kernel is then made available, and only then is the directory renamed
into ``<state>/images/<name>`` and the row recorded, with no await in between. A failed or cancelled
operation therefore leaves neither a directory nor a row behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from banger import api
from banger.config import Config
from banger.daemon.kernel_service import KernelService
from banger.daemon.locks import KeyedLock
from banger.daemon.operations import Operations
from banger.errors import AlreadyExists, BangerError, Cancelled, Conflict, InvalidArgument, NotFound
from banger.host.http import sha256_file
from banger.host.privileged import Privileged
from banger.images import bundle, golden, oci_pull, oci_registry
from banger.images import catalog as image_catalog
from banger.images import local as image_store
from banger.images.manifest import ImageManifest
from banger.kernels import catalog as kernel_catalog
from banger.model import Image
from banger.names import NAME_RE, validate_name
from banger.paths import Layout
from banger.progress import Reporter
from banger.store.repo import Store
from banger.wire import Operation

log = logging.getLogger("banger.daemon.images")
DEFAULT_SETTING = "default_image"
Produce = Callable[[Path, Reporter], Awaitable[ImageManifest]]


def image_record(manifest: ImageManifest, directory: Path) -> Image:
    """The store row for an installed image, from its manifest."""
    return Image(name=manifest.name, distro=manifest.distro, arch=manifest.arch, kernel_ref=manifest.kernel_ref,
                 source=manifest.source, dir=str(directory), rootfs_size=manifest.rootfs_size,
                 manifest=manifest.model_dump(mode="json"))


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_bundle_path(source: str) -> bool:
    """Whether ``source`` names a local bundle file rather than a registry reference."""
    return not is_url(source) and (source.startswith(("/", "./", "../")) or source.endswith(bundle.SUFFIX))


def default_pull_name(source: str) -> str:
    """The image name a pull registers when ``--name`` is not given (validated)."""
    if is_url(source) or is_bundle_path(source):
        stem = source.rstrip("/").rsplit("/", 1)[-1].removesuffix(bundle.SUFFIX)
        name = re.sub(r"-[0-9a-f]{12}$", "", stem)  # export names bundles <name>-<sha256[:12]>
    else:
        ref = oci_registry.parse_reference(source)
        name = ref.repository.rsplit("/", 1)[-1]
        if ref.digest:
            name += "-" + ref.digest.split(":", 1)[1][:12]
        elif ref.tag != "latest":
            name += "-" + ref.tag
    name = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"cannot derive an image name from {source!r}", hint="pass --name NAME")
    return validate_name("image", name)


class ImageService:
    """Owns ``<state>/images`` and the images table; holds the image lock (one change per name at a time).

    Lock order: the image lock is taken before the kernel lock (an image change may pull its kernel).
    """

    def __init__(self, config: Config, layout: Layout, store: Store, operations: Operations,
                 kernels: KernelService, priv: Privileged):
        self.config = config
        # As the owner, builds and pulls keep file owners in a user namespace the privileged seam maps.
        self.map_userns = priv.map_userns
        self.layout = layout
        self.store = store
        self.operations = operations
        self.kernels = kernels
        self.lock = KeyedLock("image")
        self.reconcile()

    @property
    def images_dir(self) -> Path:
        return self.layout.images_dir

    @property
    def cache_dir(self) -> Path:
        """Golden builds (``golden/<inputs hash>``), OCI blobs (``oci/blobs``) and downloads."""
        return self.layout.cache_dir / "images"

    # --- reads --------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the images table match the directories on disk (a crash may fall between the two)."""
        try:
            on_disk = {m.name: m for m in image_store.list_images(self.images_dir)}
        except BangerError as exc:
            log.warning("cannot read the image store", extra={"error": exc.message})
            return
        for row in self.store.list_images():
            if row.name not in on_disk:
                self.store.delete_image(row.name)
        known = {i.name for i in self.store.list_images()}
        for name, manifest in on_disk.items():
            if name not in known and manifest.name == name:
                self.store.put_image(image_record(manifest, self.images_dir / name))

    def list_images(self) -> list[Image]:
        return self.store.list_images()

    def get(self, name: str) -> Image:
        """Installed image ``name``; NotFound saying how to get it otherwise."""
        image = self.store.find_image(validate_name("image", name))
        if image is None:
            hint = ("`banger image build` makes it" if name == golden_name(self.config)
                    else "`banger image list` shows local images; `banger image pull` fetches one")
            raise NotFound(f"no image named {name!r}", hint=hint)
        return image

    def default_name(self) -> str:
        """The image new VMs use: the promoted one, else ``config.default_image_name``."""
        return self.store.get_setting(DEFAULT_SETTING) or self.config.default_image_name

    # --- operations ---------------------------------------------------------------------------------

    def start_build(self, name: str, force: bool = False, no_cache: bool = False) -> Operation:
        """Start ``image.build``: the golden image, registered as ``name``."""
        self._check_free(validate_name("image", name), force)
        return self._start(api.IMAGE_BUILD.name, name, force, self._golden_producer(name, no_cache))

    def _golden_producer(self, name: str, no_cache: bool) -> Produce:
        async def produce(dest: Path, reporter: Reporter) -> ImageManifest:
            return await golden.build_golden(dest, name=name, mirror=self.config.debian_mirror,
                                             cache_dir=self.cache_dir, reporter=reporter, force=no_cache,
                                             mapper=self.map_userns)

        return produce

    def start_pull(self, p: api.ImagePull) -> Operation:
        """Start ``image.pull`` from a catalog name, a bundle URL or file, or a registry reference."""
        name = validate_name("image", p.name) if p.name else self._pull_name(p.source)
        self._check_free(name, p.force)
        return self._start(api.IMAGE_PULL.name, name, p.force, self._pull_producer(p))

    def _pull_name(self, source: str) -> str:
        return source if source in image_catalog.load_catalog() else default_pull_name(source)

    def _pull_producer(self, p: api.ImagePull) -> Produce:
        if is_url(p.source) or is_bundle_path(p.source) or p.source in image_catalog.load_catalog():
            if is_bundle_path(p.source) and not os.path.isabs(p.source):
                raise InvalidArgument(f"bundle path {p.source!r} must be absolute (the daemon has its own cwd)")

            async def from_bundle(dest: Path, reporter: Reporter) -> ImageManifest:
                return await bundle.import_bundle(p.source, dest, sha256=p.sha256, reporter=reporter)

            return from_bundle
        oci_registry.parse_reference(p.source, insecure=p.insecure)  # refuse a bad reference up front

        async def from_registry(dest: Path, reporter: Reporter) -> ImageManifest:
            return await oci_pull.pull_oci(p.source, dest, cache_dir=self.cache_dir, reporter=reporter,
                                           insecure=p.insecure, kernel_ref=self.config.default_kernel,
                                           mapper=self.map_userns)

        return from_registry

    def start_register(self, p: api.ImageRegister) -> Operation:
        """Start ``image.register``: an existing ext4 rootfs with a catalog kernel or its own vmlinux."""
        name = validate_name("image", p.name)
        self._check_free(name, False)
        for path in (p.rootfs, p.kernel, p.initrd):
            if path is not None and not os.path.isabs(path):
                raise InvalidArgument(f"path {path!r} must be absolute (the daemon has its own cwd)")
        if p.initrd and not p.kernel:
            raise InvalidArgument("--initrd needs --kernel", hint="or use --kernel-ref NAME")
        if p.kernel and p.kernel_ref:
            raise InvalidArgument("pass either --kernel-ref or --kernel, not both")
        if p.kernel_ref:
            self._check_kernel_ref(p.kernel_ref)
        return self.operations.start(api.IMAGE_REGISTER.name, name, lambda r: self._register(p, name, r))

    def _check_kernel_ref(self, name: str) -> None:
        if self.store.find_kernel(validate_name("kernel", name)) is None and name not in kernel_catalog_names():
            raise NotFound(f"kernel {name!r} is neither installed nor in the kernel catalog",
                           hint="`banger kernel import` it first, or see `banger kernel list --available`")

    async def _register(self, p: api.ImageRegister, name: str, reporter: Reporter) -> api.ImageInstalled:
        async with AsyncExitStack() as undo:
            kernel_ref = p.kernel_ref or self.config.default_kernel
            if p.kernel:
                reporter.stage(f"importing kernel {name}")
                await self.kernels.import_kernel(name, p.kernel, p.initrd)
                undo.push_async_callback(self.kernels.remove, name)
                kernel_ref = name

            async def produce(dest: Path, reporter: Reporter) -> ImageManifest:
                reporter.stage(f"copying {p.rootfs} and extracting its work seed")
                return await image_store.register(dest.parent, name, Path(p.rootfs), kernel_ref=kernel_ref)

            image = await self._install(name, False, reporter, produce)
            undo.pop_all()
        return api.ImageInstalled(image=image)

    def start_export(self, name: str, output: str) -> Operation:
        """Start ``image.export``: write image ``name`` as a ``.tar.zst`` bundle at ``output``."""
        self.get(name)
        out = Path(output)
        if not out.is_absolute():
            raise InvalidArgument(f"output path {output!r} must be absolute (the daemon has its own cwd)")
        if not (out.is_dir() or out.parent.is_dir()):
            raise NotFound(f"directory {out.parent} does not exist", hint="create it or pick another -o path")
        return self.operations.start(api.IMAGE_EXPORT.name, name, lambda r: self._export(name, out, r))

    async def _export(self, name: str, out: Path, reporter: Reporter) -> api.ImageExported:
        async with self.lock.hold(name):
            image = self.get(name)
            reporter.stage(f"writing bundle of {name}")
            path = await bundle.export_bundle(Path(image.dir), out)
        reporter.stage("checksumming bundle")
        digest = await asyncio.to_thread(sha256_file, path)
        return api.ImageExported(path=str(path), sha256=digest, size=path.stat().st_size)

    def _start(self, kind: str, name: str, force: bool, produce: Produce) -> Operation:
        async def work(reporter: Reporter) -> api.ImageInstalled:
            return api.ImageInstalled(image=await self._install(name, force, reporter, produce))

        return self.operations.start(kind, name, work)

    # --- the install pipeline -----------------------------------------------------------------------

    def _check_free(self, name: str, force: bool) -> None:
        exists = self.store.find_image(name) is not None or (self.images_dir / name).exists()
        if exists and not force:
            raise AlreadyExists(f"image {name!r} already exists",
                                hint="pass --force to replace it, or `banger image delete` it first")
        users = self.store.vms_using_image(name) if exists else []
        if users:
            raise Conflict(f"image {name!r} is used by VM(s) {', '.join(users)}; it cannot be replaced",
                           hint="delete those VMs first, or pull/build under another --name")

    async def _install(self, name: str, force: bool, reporter: Reporter, produce: Produce) -> Image:
        """Produce image ``name`` in a work directory, make its kernel available, then swap it in."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        async with self.lock.hold(name):
            self._check_free(name, force)
            work = Path(tempfile.mkdtemp(prefix=f".new-{name}-", dir=self.images_dir))
            try:
                manifest = await produce(work / name, reporter)
                await self._ensure_kernel(manifest.kernel_ref, reporter)
                self._check_free(name, force)
                return self._commit(work / name, manifest)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)

    async def _ensure_kernel(self, kernel_ref: str, reporter: Reporter) -> None:
        # A kernel that cannot be fetched now does not void a good image: `vm create` pulls it again.
        if not kernel_ref:
            return
        try:
            await self.kernels.ensure(kernel_ref, reporter)
        except (Cancelled, asyncio.CancelledError):
            raise
        except BangerError as exc:
            reporter.note(f"warning: kernel {kernel_ref!r} is not available: {exc.message}; "
                         f"run `banger kernel pull {kernel_ref}` before creating a VM")

    def _commit(self, built: Path, manifest: ImageManifest) -> Image:
        """Rename ``built`` into place (replacing any old image) and record it; no awaits inside."""
        target = image_store.image_dir(self.images_dir, manifest.name)
        if target.exists():
            os.replace(target, built.with_name(f"old-{uuid.uuid4().hex[:8]}"))  # removed with the work dir
        os.replace(built, target)
        image = image_record(manifest, target)
        self.store.put_image(image)
        log.info("image installed", extra={"image": manifest.name, "source": manifest.source})
        return image

    # --- quick changes ------------------------------------------------------------------------------

    async def promote(self, name: str) -> Image:
        """Make image ``name`` the default for new VMs."""
        image = self.get(name)
        self.store.set_setting(DEFAULT_SETTING, name)
        return image

    async def delete(self, name: str) -> None:
        """Delete image ``name``; Conflict while a VM uses it."""
        self.get(name)
        async with self.lock.hold(name):
            users = self.store.vms_using_image(name)
            if users:
                raise Conflict(f"image {name!r} is used by VM(s) {', '.join(users)}",
                               hint="delete those VMs first (`banger vm delete ...`)")
            self.store.delete_image(name)
            if self.store.get_setting(DEFAULT_SETTING) == name:
                self.store.set_setting(DEFAULT_SETTING, "")
            if (self.images_dir / name).exists():
                await image_store.remove_image(self.images_dir, name)

    async def prune_cache(self, dry_run: bool = False) -> api.CachePruneResult:
        """Remove cached OCI blobs no registered image references, and stale golden builds."""
        keep = oci_registry.referenced_digests(i.extra for i in self.list_images())
        doomed = await asyncio.to_thread(oci_registry.prune_cache, self.cache_dir, keep, dry_run)
        doomed += await asyncio.to_thread(self._prune_golden, dry_run)
        removed = [api.RemovedFile(path=str(p), size=size) for p, size in doomed]
        return api.CachePruneResult(removed=removed, bytes=sum(size for _, size in doomed))

    def _prune_golden(self, dry_run: bool) -> list[tuple[Path, int]]:
        root = self.cache_dir / "golden"
        current = golden.inputs_hash(self.config.debian_mirror)
        stale = [d for d in root.iterdir() if d.name != current] if root.is_dir() else []
        found = [(d, du(d)) for d in stale]
        if not dry_run:
            for d in stale:
                shutil.rmtree(d, ignore_errors=True)
        return found

    # --- for the VM service -------------------------------------------------------------------------

    async def ensure(self, name: str, reporter: Reporter) -> Image:
        """Installed image ``name``; the golden one is built and catalog ones pulled when missing."""
        image = self.store.find_image(validate_name("image", name))
        if image is not None:
            return image
        if name in image_catalog.load_catalog():
            reporter.stage(f"pulling image {name}")
            produce = self._pull_producer(api.ImagePull(source=name))
        elif name == golden_name(self.config):
            reporter.stage(f"building image {name}")
            produce = self._golden_producer(name, no_cache=False)
        else:
            return self.get(name)
        try:
            return await self._install(name, False, reporter, produce)
        except AlreadyExists:
            return self.get(name)  # a concurrent ensure made it first

    async def ensure_default(self, reporter: Reporter) -> Image:
        """The default image (promoted or configured), built or pulled first when missing."""
        return await self.ensure(self.default_name(), reporter)


def kernel_catalog_names() -> set[str]:
    return {e.name for e in kernel_catalog.entries()}


def golden_name(config: Config) -> str:
    """The name under which `image build` registers the golden image by default."""
    return config.default_image_name


def du(path: Path) -> int:
    """Allocated bytes under ``path`` (sparse images count what they really use)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total
