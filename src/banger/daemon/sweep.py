"""The start-up sweep: whatever an earlier daemon left when it died mid-way is found and removed.

Run once by ``reconcile.adopt_all`` after running VMs are re-adopted, before the daemon serves anyone:

- VMM processes whose command line names a path under ``<state>/vms`` but that no adopted VM owns (one
  spawned just before a crash, before its ``handles.json`` was written) are killed, and so are QEMUs of
  snapshot template builds (``<state>/templates``) no adopted clone is, and Firecrackers jailed under
  ``<state>-jail`` (their command line is chroot-relative; their root directory names the jail) that no
  adopted VM owns; jail directories of VMs not running are removed;
- NAT rules and TAP filters of VMs that are not running are deleted;
- banger's device-mapper devices and loop devices backed by files under the state dir that no VM's
  ``disks.json`` names are removed;
- staging, trash and scratch directories of interrupted image, kernel, VM and workspace operations
  (hidden ``.``-entries of the image, kernel and template stores, ``workspace-*``, ``.config-*`` and unread
  ``exports`` in VM dirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from banger.daemon.network import NetworkService
from banger.daemon.vm_handles import read_root_disk
from banger.errors import BangerError
from banger.host import jail
from banger.host.privileged import Privileged
from banger.images import rootless
from banger.names import VM_ID_RE
from banger.paths import Layout

log = logging.getLogger("banger.daemon.sweep")


VMM_PROGRAMS = (b"qemu-system-", b"firecracker", b"jailer")


def orphan_vmms(vms_dir: Path, adopted: set[int]) -> list[int]:
    """Pids of VMM processes whose command line names a path in ``vms_dir`` and that no VM owns.

    Only VMM programs count (a person's ``less .../console.log`` is left alone); the state dir in the
    command line ties a VMM to this daemon and no other.
    """
    marker = os.fsencode(str(vms_dir)) + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in adopted:
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.path.basename(argv[0]).startswith(VMM_PROGRAMS) and any(marker in a for a in argv):
                found.append(int(entry.name))
    return sorted(found)


def kill_orphans(vms_dir: Path, adopted: set[int]) -> list[int]:
    pids = orphan_vmms(vms_dir, adopted)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


async def kill_jailed_orphans(layout: Layout, adopted: set[int]) -> list[int]:
    """Kill jailed VMM processes under ``<state>-jail`` that no adopted VM owns."""
    base = jail.jail_base(layout.state_dir)
    pids = [pid for pid in jail.jailed_pids(base) if pid not in adopted]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # up to 5 s: gone before their jails are removed (next step)
        if not set(pids) & set(jail.jailed_pids(base)):
            break
        await asyncio.sleep(0.05)
    return pids


async def remove_stale_jails(layout: Layout, priv: Privileged, running: set[str]) -> list[Path]:
    """Remove the jail directories of VMs that are not running (their processes are gone by now); the
    jails are root's, so through the privileged seam."""
    base = jail.jail_base(layout.state_dir)
    live = set(jail.jailed_pids(base).values())
    stale = [p for p in jail.stale_jails(base, running) if p.name not in live]
    removed = []
    for path in stale:
        if not VM_ID_RE.fullmatch(path.name):
            continue  # not banger's (the helper would refuse the name)
        try:
            await priv.remove_jail(path.name, base)
        except BangerError as exc:
            log.warning("could not remove a stale jail", extra={"jail": str(path), "error": str(exc)})
            continue
        removed.append(path)
    return removed


def scratch_dirs(layout: Layout) -> list[Path]:
    """Leftovers of interrupted operations (no operation runs while the daemon starts)."""
    found = []
    golden_cache = layout.cache_dir / "images" / "golden"  # a golden build's stage (images.golden)
    for store in (layout.images_dir, layout.kernels_dir, layout.templates_dir, golden_cache):
        if store.is_dir():
            found += [p for p in store.iterdir() if p.name.startswith(".")]
    if layout.vms_dir.is_dir():
        for vm_dir in layout.vms_dir.iterdir():
            if vm_dir.is_dir():
                found += [p for p in vm_dir.iterdir() if p.name.startswith(("workspace-", ".config-", "exports"))]
    return sorted(found)


async def remove_scratch(layout: Layout, priv: Privileged) -> list[Path]:
    found = scratch_dirs(layout)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            # What an owner's build left inside its user namespace belongs to subordinate ids.
            await rootless.remove_quietly(path, priv.map_userns)
        else:
            path.unlink(missing_ok=True)
    return found


async def release_devices(layout: Layout, priv: Privileged) -> list[str]:
    """Remove dm devices and detach loops that no VM's disks.json names; what was released."""
    keep_dm: set[str] = set()
    keep_loops: set[str] = set()
    if layout.vms_dir.is_dir():
        for vm_dir in layout.vms_dir.iterdir():
            root = read_root_disk(vm_dir)
            if root is not None:
                keep_dm |= {root.dm_name} if root.dm_name else set()
                keep_loops |= set(root.loops)
    released = []
    for name in await priv.dm_names():
        if name not in keep_dm:
            await priv.dm_remove(name)
            released.append(name)
    for device in await priv.loops_under(layout.state_dir):
        if device not in keep_loops:
            await priv.detach_loop(device)
            released.append(device)
    return released


async def sweep(layout: Layout, network: NetworkService, priv: Privileged, running: dict[str, int]) -> None:
    """Everything above; ``running`` maps the ids of re-adopted VMs to their VMM pids. Never raises."""
    steps: list[tuple[str, Callable[[], object]]] = [
        ("killed orphaned VMM processes", lambda: kill_orphans(layout.vms_dir, set(running.values()))),
        # A template build the daemon did not finish (clones name the templates dir too, but are adopted).
        ("killed unfinished template builds", lambda: kill_orphans(layout.templates_dir, set(running.values()))),
        ("killed orphaned jailed VMMs", lambda: kill_jailed_orphans(layout, set(running.values()))),
        ("removed jails of VMs not running", lambda: remove_stale_jails(layout, priv, set(running))),
        ("removed rules of VMs not running", lambda: network.sweep_rules(set(running))),
        ("released devices no VM uses", lambda: release_devices(layout, priv)),
        ("removed scratch directories", lambda: remove_scratch(layout, priv)),
    ]
    for what, step in steps:
        try:
            done = step()
            if inspect.isawaitable(done):
                done = await done
        except Exception:
            log.exception("start-up sweep step failed", extra={"step": what})
            continue
        if done:
            log.info(what, extra={"items": [str(d) for d in done]})  # type: ignore[attr-defined]
