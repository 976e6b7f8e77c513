"""KernelService: the local kernel store (list, show, pull from the catalog, import, remove)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from banger import api
from banger.config import Config
from banger.daemon.locks import KeyedLock
from banger.daemon.operations import Operations
from banger.errors import AlreadyExists, BangerError, Conflict, InvalidArgument, NotFound
from banger.kernels import catalog
from banger.kernels import local as kernel_store
from banger.kernels.manifest import KernelManifest
from banger.model import Kernel
from banger.names import validate_name
from banger.paths import Layout
from banger.progress import Reporter
from banger.store.repo import Store
from banger.wire import Operation

log = logging.getLogger("banger.daemon.kernels")


def kernel_record(manifest: KernelManifest, directory: Path) -> Kernel:
    """The store row for an installed kernel, from its manifest."""
    source = "import" if manifest.source == "import" else "catalog"
    return Kernel(name=manifest.name, version=manifest.kernel_version, dir=str(directory), source=source,
                  manifest=manifest.model_dump(mode="json"))


class KernelService:
    """Owns ``<state>/kernels`` and the kernels table; holds the kernel lock (one pull per name at a time)."""

    def __init__(self, config: Config, layout: Layout, store: Store, operations: Operations):
        self.config = config
        self.layout = layout
        self.store = store
        self.operations = operations
        self.lock = KeyedLock("kernel")
        self.reconcile()

    @property
    def kernels_dir(self) -> Path:
        return self.layout.kernels_dir

    @property
    def cache_dir(self) -> Path:
        """Verified .deb downloads, keyed by sha256, reused by later pulls."""
        return self.layout.cache_dir / "kernels"

    # --- reads --------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the kernels table match the directories on disk (a crash may fall between the two)."""
        try:
            on_disk = {m.name: m for m in kernel_store.list_kernels(self.kernels_dir)}
        except BangerError as exc:
            log.warning("cannot read the kernel store", extra={"error": exc.message})
            return
        for row in self.store.list_kernels():
            if row.name not in on_disk:
                self.store.delete_kernel(row.name)
        known = {k.name for k in self.store.list_kernels()}
        for name, manifest in on_disk.items():
            if name not in known:
                self.store.put_kernel(kernel_record(manifest, self.kernels_dir / name))

    def list_kernels(self, available: bool = False) -> api.KernelList:
        """Installed kernels, plus the catalog entries when ``available``."""
        return api.KernelList(kernels=self.store.list_kernels(), available=catalog.entries() if available else [])

    def get(self, name: str) -> Kernel:
        """Installed kernel ``name``; NotFound saying how to get it otherwise."""
        kernel = self.store.find_kernel(validate_name("kernel", name))
        if kernel is None:
            in_catalog = any(e.name == name for e in catalog.entries())
            hint = (f"`banger kernel pull {name}` fetches it" if in_catalog
                    else "`banger kernel list --available` shows what can be pulled")
            raise NotFound(f"kernel {name!r} is not installed", hint=hint)
        return kernel

    def users(self, name: str) -> list[str]:
        """VMs that boot kernel ``name``: explicitly, or through their image's kernel_ref."""
        refs = {i.name: i.kernel_ref for i in self.store.list_images()}
        return [vm.name for vm in self.store.list_vms()
                if (vm.spec.kernel or refs.get(vm.spec.image, "")) == name]

    # --- changes ------------------------------------------------------------------------------------

    def start_pull(self, name: str, force: bool = False) -> Operation:
        """Start ``kernel.pull`` as an operation; the CLI follows it."""
        validate_name("kernel", name)
        entry = catalog.get_entry(name)
        if not force and (self.kernels_dir / name).exists():
            raise AlreadyExists(f"kernel {name!r} is already installed",
                                hint=f"`banger kernel pull {name} --force` replaces it")

        async def work(reporter: Reporter) -> api.KernelInstalled:
            return api.KernelInstalled(kernel=await self.pull(entry, force, reporter))

        return self.operations.start(api.KERNEL_PULL.name, name, work)

    async def pull(self, entry: catalog.CatalogEntry, force: bool, reporter: Reporter) -> Kernel:
        """Fetch or build catalog ``entry`` (staged, renamed in whole) and record it."""
        async with self.lock.hold(entry.name):
            return await self._pull_locked(entry, force, reporter)

    async def _pull_locked(self, entry: catalog.CatalogEntry, force: bool, reporter: Reporter) -> Kernel:
        manifest = await kernel_store.pull(self.kernels_dir, entry, force, mirror=self.config.debian_mirror,
                                           cache_dir=self.cache_dir, reporter=reporter)
        kernel = kernel_record(manifest, self.kernels_dir / entry.name)
        self.store.put_kernel(kernel)
        reporter.log(f"kernel {entry.name} {manifest.kernel_version} installed")
        return kernel

    async def ensure(self, name: str, reporter: Reporter) -> Kernel:
        """Installed kernel ``name``, pulled from the catalog first when it is missing."""
        validate_name("kernel", name)
        async with self.lock.hold(name):
            kernel = self.store.find_kernel(name)
            if kernel is not None:
                return kernel
            try:
                entry = catalog.get_entry(name)
            except NotFound as exc:
                raise NotFound(f"kernel {name!r} is not installed and not in the catalog",
                               hint="`banger kernel import` it, or pick a kernel from "
                               "`banger kernel list --available`") from exc
            reporter.stage(f"pulling kernel {name}")
            return await self._pull_locked(entry, False, reporter)

    async def import_kernel(self, name: str, vmlinux: str, initrd: str | None = None) -> Kernel:
        """Install a vmlinux (and optional initrd) from the daemon host's filesystem as kernel ``name``."""
        validate_name("kernel", name)
        for path in (vmlinux, initrd):
            if path is not None and not Path(path).is_absolute():
                raise InvalidArgument(f"path {path!r} must be absolute (the daemon has its own cwd)")
        async with self.lock.hold(name):
            manifest = await kernel_store.import_kernel(
                self.kernels_dir, name, Path(vmlinux), Path(initrd) if initrd else None)
            kernel = kernel_record(manifest, self.kernels_dir / name)
            self.store.put_kernel(kernel)
            return kernel

    async def remove(self, name: str) -> None:
        """Delete kernel ``name``; Conflict while a VM boots it."""
        self.get(name)
        async with self.lock.hold(name):
            users = self.users(name)
            if users:
                raise Conflict(f"kernel {name!r} is used by VM(s) {', '.join(users)}",
                               hint="delete those VMs first (`banger vm delete ...`)")
            self.store.delete_kernel(name)
            if (self.kernels_dir / name).exists():
                await asyncio.to_thread(kernel_store.remove, self.kernels_dir, name)
