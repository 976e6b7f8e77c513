"""Keeping state.db true to the host: adopt or clean up at daemon start, watch for dead VMMs, reap stale VMs.

At start: a VM row marked ``creating`` is an interrupted create and is undone entirely; a ``running`` VM
whose VMM still answers is re-adopted (its TAP kept); one whose VMM is gone is marked ``error`` with the
reason and its TAP and NAT rules released; TAPs nobody owns are deleted. While running, a watcher notices
a VMM that exits on its own (guest power-off, crash, ``kill -9``) and records why.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from banger.daemon import sweep
from banger.daemon.vm_handles import read_handles
from banger.daemon.vm_service import VMService
from banger.model import VM, now

log = logging.getLogger("banger.daemon.reconcile")
WATCH_INTERVAL = 1.0
REAP_INTERVAL = 60.0
POWER_OFF_MARKERS = (b"reboot: Power down", b"reboot: Restarting system", b"reboot: System halted")


async def adopt_all(vms: VMService) -> None:
    """Bring the records in line with the host after a (re)start of the daemon."""
    for vm in vms.store.list_vms():
        try:
            await _adopt(vms, vm)
        except Exception:
            log.exception("could not reconcile VM", extra={"vm": vm.name})
    await sweep.sweep(vms.layout, vms.network, vms.network.priv,
                      {vm_id: h.vmm.pid for vm_id, h in vms.lifecycle.running.items()})
    in_use = {h.tap for h in vms.lifecycle.running.values()}
    swept = await vms.network.sweep_taps(in_use)
    if swept:
        log.info("deleted orphan TAPs", extra={"taps": swept})
    # The pool refills on the first TAP taken: a daemon that never starts a VM makes no bridge.


async def _adopt(vms: VMService, vm: VM) -> None:
    if vm.creating:
        log.info("undoing interrupted create", extra={"vm": vm.name})
        await vms._discard(vm)
        return
    handles = read_handles(Path(vm.vm_dir))
    if handles is None:
        if vm.state == "running":
            vms.store.update_vm(vm, state="error", reason="bangerd lost track of the VM (no handles.json)")
        return
    driver = vms.runtimes.driver(handles.vmm.runtime)
    if await driver.adopt(handles.vmm):
        vms.lifecycle.running[vm.id] = handles
        if vm.state != "running":
            vms.store.update_vm(vm, state="running", reason=None)
        log.info("re-adopted running VM", extra={"vm": vm.name, "pid": handles.vmm.pid})
        return
    reason = exit_reason(handles.vmm.console_log, handles.vmm.pid, while_down=True)
    await vms.lifecycle.release(vm, handles)
    vms.store.update_vm(vm, state=_state_for(reason), reason=reason)


def exit_reason(console_log: Path, pid: int, *, while_down: bool = False) -> str:
    """Why a VMM is gone: a clean guest power-off (from the console) or an unexpected exit."""
    try:
        with open(console_log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read()
    except OSError:
        tail = b""
    when = " while bangerd was down" if while_down else ""
    if any(m in tail for m in POWER_OFF_MARKERS):
        return f"the guest powered off{when}"
    return f"the VMM process (pid {pid}) exited unexpectedly{when}"


def _state_for(reason: str) -> str:
    return "stopped" if "powered off" in reason else "error"


async def watch(vms: VMService) -> None:
    """Forever: notice VMMs that died on their own."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        for vm_id, handles in list(vms.lifecycle.running.items()):
            if vms.vm_lock.locked(vm_id):
                continue  # a start/stop is in charge of this VM right now
            if vms.runtimes.driver(handles.vmm.runtime).is_alive(handles.vmm):
                continue
            try:
                await _mark_dead(vms, vm_id)
            except Exception:
                log.exception("could not record a dead VM", extra={"vm_id": vm_id})


async def _mark_dead(vms: VMService, vm_id: str) -> None:
    async with vms.vm_lock.hold(vm_id):
        handles = vms.lifecycle.running.get(vm_id)
        vm = vms.store.find_vm(vm_id)
        if handles is None or vm is None or vms.runtimes.driver(handles.vmm.runtime).is_alive(handles.vmm):
            return
        reason = exit_reason(handles.vmm.console_log, handles.vmm.pid)
        await vms.exec.forget_vm(vm_id)  # its agent link and commands went with it
        await vms.lifecycle.release(vm, handles)
        vms.store.update_vm(vm, state=_state_for(reason), reason=reason)
        log.warning("VM stopped on its own", extra={"vm": vm.name, "reason": reason})


async def reap_stale(vms: VMService) -> None:
    """Forever (when ``auto_stop_stale_after`` is set): stop running VMs nobody touched for that long."""
    limit = vms.config.stale_after_seconds
    if not limit:
        return
    while True:
        await asyncio.sleep(min(REAP_INTERVAL, limit))
        cutoff = now() - timedelta(seconds=limit)
        for vm in vms.store.list_vms():
            if vm.state == "running" and vm.touched_at < cutoff:
                log.info("stopping stale VM", extra={"vm": vm.name})
                try:
                    await vms.stop(vm.id)
                    vms.store.update_vm(vms.store.get_vm(vm.id), reason=f"stopped after {limit}s unused")
                except Exception:
                    log.exception("could not stop stale VM", extra={"vm": vm.name})
