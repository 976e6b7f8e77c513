"""WorkspaceService: ``vm.workspace.prepare`` (a host repo into a running guest) and ``vm.workspace.export``
(the guest's changes back as one binary patch).

Locks: ``workspace_lock`` (one per VM id) serialises prepare and export on a VM. Neither takes the VM's
lifecycle lock, so start/stop/delete are never blocked behind a long stream; each re-checks that the VM is
running once it holds the workspace lock, and a VM that stops mid-stream fails the stream with GuestError.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh

from banger import api
from banger.daemon import workspace_stream
from banger.daemon.locks import KeyedLock
from banger.daemon.server import requesting_user
from banger.daemon.vm_service import VMService
from banger.errors import NO_AGENT, BangerError, Conflict, GuestError, InvalidArgument, NotFound
from banger.guest import ssh
from banger.guest.agent import AgentResult
from banger.model import VM, Workspace
from banger.paths import Layout
from banger.store.repo import Store
from banger.workspace import export_host, image, patch, plan, repo

log = logging.getLogger("banger.daemon.workspace")


class WorkspaceService:
    def __init__(self, layout: Layout, store: Store, vms: VMService):
        self.layout = layout
        self.store = store
        self.vms = vms
        self.workspace_lock = KeyedLock("workspace")
        self._exports: dict[str, Path] = {}  # export id -> patch waiting to be read (vm.workspace.export.read)

    # --- prepare ------------------------------------------------------------------------------------

    async def prepare(self, req: api.WorkspacePrepare) -> api.WorkspacePrepareResult:
        """Validate the repo before touching the VM, then ship it (or, with ``dry_run``, list what would go)."""
        started = time.monotonic()
        guest = plan.guest_path(req.guest_path)
        info, head = await self._checked_repo(req)
        entries = [] if req.from_ref else await repo.work_tree_entries(
            info, include_untracked=req.include_untracked, recurse_submodules=req.mode == "full_copy")
        if req.dry_run:
            if req.ref is not None:
                self.store.get_vm(req.ref)  # NotFound for a typo, even in a dry run
            return await self._dry_run(info, head, entries, req.mode)
        if req.ref is None:
            raise InvalidArgument("vm.workspace.prepare needs a VM unless it is a dry run")
        vm = self.store.get_vm(req.ref)
        async with self.workspace_lock.hold(vm.id):
            vm = self.vms.running_vm(vm.id)
            sent, notes = await self._ship(vm, info, head, entries, guest, req)
            ws = Workspace(guest_path=guest, host_path=str(info.root), head_commit=head, branch=req.branch,
                           mode=req.mode)
            self.store.update_vm(self.store.get_vm(vm.id), workspace=ws)
        log.info("workspace prepared", extra={"vm": vm.name, "files": len(entries), "bytes": sent})
        return api.WorkspacePrepareResult(
            workspace=ws, file_count=len(entries), file_bytes=sum(e.size for e in entries), bytes_sent=sent,
            seconds=round(time.monotonic() - started, 3), notes=notes)

    @staticmethod
    def offline_eligible(req: api.WorkspacePrepare) -> bool:
        """Whether ``req`` can be built on the host as a disk (a shallow ship of the host's HEAD)."""
        return req.mode == "shallow" and not req.from_ref and not req.dry_run

    async def build_offline(self, vm: VM, req: api.WorkspacePrepare,
                            dest: Path) -> tuple[Workspace, api.WorkspacePrepareResult, set[str]]:
        """The repository of ``req`` as the workspace image ``dest`` for the VM being created (not yet
        booted: no lock needed, nothing else knows the VM). Refusals come before anything is built."""
        started = time.monotonic()
        guest = plan.guest_path(req.guest_path)
        info, head = await self._checked_repo(req)
        entries = await repo.work_tree_entries(info, include_untracked=req.include_untracked,
                                               recurse_submodules=False)
        built = await image.build(info, head, req.branch or info.branch, entries, dest,
                                  Path(vm.vm_dir) / f"workspace-{secrets.token_hex(4)}")
        ws = Workspace(guest_path=guest, host_path=str(info.root), head_commit=head, branch=req.branch,
                       mode="shallow", offline=True)
        log.info("workspace image built", extra={"vm": vm.name, "files": built.files, "seconds": built.seconds})
        notes = [f"workspace built on the host: {', '.join(f'{k} {v:.2f}s' for k, v in built.seconds.items())}"]
        top = {e.path.split("/", 1)[0] for e in entries}
        return ws, api.WorkspacePrepareResult(
            workspace=ws, file_count=built.files, file_bytes=built.bytes, bytes_sent=0,
            seconds=round(time.monotonic() - started, 3), notes=notes), top

    async def bootstrap_offline(self, vm: VM, req: api.WorkspacePrepare, ws: Workspace,
                                entries_top: set[str]) -> list[str]:
        """The tool bootstrap of an offline workspace (over SSH, only when the repo asks for one)."""
        if req.no_bootstrap or not plan.wants_bootstrap(entries_top):
            return []
        async with await self._connect(vm) as conn:
            notes = await self._bootstrap(conn, vm, ws.guest_path, entries_top, req)
        return notes

    async def _checked_repo(self, req: api.WorkspacePrepare) -> tuple[repo.RepoInfo, str]:
        info = await repo.inspect(Path(req.path), as_user=requesting_user())
        if req.mode == "shallow" and info.submodules:
            raise InvalidArgument(
                f"{info.root} has submodules ({', '.join(info.submodules[:3])}); a shallow workspace cannot "
                "carry them", hint="use --mode full_copy, which ships the whole .git including submodules")
        if req.mode == "full_copy" and info.git_dir != info.root / ".git":
            raise InvalidArgument(f"{info.root} is a linked worktree (its git dir is {info.git_dir}); "
                                  "full_copy ships a .git directory", hint="use --mode shallow")
        if req.from_ref and req.include_untracked:
            raise InvalidArgument("--from checks a commit out in the guest; it takes no --include-untracked")
        if req.from_ref and not req.branch:
            raise InvalidArgument("--from REF needs --branch NAME (the guest-only branch to start at REF)")
        if req.branch:
            await repo.check_branch_name(info, req.branch)
        head = await repo.resolve_commit(info, req.from_ref) if req.from_ref else info.head
        return info, head

    async def _dry_run(self, info: repo.RepoInfo, head: str, entries: list[repo.Entry],
                       mode: str) -> api.WorkspacePrepareResult:
        if mode == "full_copy":
            history = sum(e.size for e in repo.git_dir_entries(info.git_dir))
        else:
            history = await repo.history_bytes(info, head)
        return api.WorkspacePrepareResult(
            dry_run=True, files=[api.ShippedFile(path=e.path, size=e.size) for e in entries],
            file_count=len(entries), file_bytes=sum(e.size for e in entries), history_bytes=history,
            head_commit=head, host_root=str(info.root))

    async def _ship(self, vm: VM, info: repo.RepoInfo, head: str, entries: list[repo.Entry], guest: str,
                    req: api.WorkspacePrepare) -> tuple[int, list[str]]:
        names = [e.path for e in entries]
        with tempfile.TemporaryDirectory(dir=vm.vm_dir, prefix="workspace-", ignore_cleanup_errors=True) as tmp:
            if req.mode == "shallow":
                extra: str | None = tmp
                await image.shallow_git_dir(info, head, req.branch or (None if req.from_ref else info.branch),
                                       Path(tmp) / ".git")
            else:
                extra = None
                names += [".git", *(f".git/{e.path}" for e in repo.git_dir_entries(info.git_dir))]
            async with await self._connect(vm) as conn:
                sent = await self._unpack(conn, vm, str(info.root), extra, names, guest)
                await self._setup(conn, vm, _setup_for(info, head, guest, req))
                notes = await self._bootstrap(conn, vm, guest, {n for n in names if "/" not in n}, req)
        return sent, notes

    async def _connect(self, vm: VM) -> asyncssh.SSHClientConnection:
        await self.vms.sshd_ready(vm)
        return await ssh.connect(vm.ip or "", key_path=self.vms.key_path, known_hosts=self.layout.known_hosts,
                                 host_aliases=(f"{vm.name}.vm",))

    async def _unpack(self, conn: asyncssh.SSHClientConnection, vm: VM, root: str, extra: str | None,
                      names: list[str], guest: str) -> int:
        # Refuse before streaming: a guest that refuses mid-stream leaves megabytes in flight to unwind.
        res = await ssh.exec(conn, plan.empty_check_script(guest), login_shell=False)
        if res.exit_status == 0:
            sent, res = await workspace_stream.pipe_tar(conn, plan.host_tar_argv(root, extra), names,
                                                        plan.unpack_script(guest))
        else:
            sent = 0
        if res.exit_status == plan.NOT_EMPTY_STATUS:
            raise Conflict(f"{guest} in VM {vm.name!r} is not empty; banger will not overwrite it",
                           hint="export what is there first, or pass another --guest-path")
        if res.exit_status != 0:
            raise GuestError(f"unpacking the workspace into {guest} in VM {vm.name!r} failed "
                             f"({res.exit_status}): {_tail(res.stderr)}")
        return sent

    async def _setup(self, conn: asyncssh.SSHClientConnection, vm: VM, setup: plan.GuestSetup) -> None:
        res = await ssh.exec(conn, plan.setup_script(setup), login_shell=False)
        got = res.stdout.decode(errors="replace").strip().splitlines()
        if res.exit_status != 0 or not got or got[-1] != setup.head:
            raise GuestError(f"setting up git in {setup.guest_path} in VM {vm.name!r} failed "
                             f"({res.exit_status}): {_tail(res.stderr)}",
                             hint=f"the files are in {setup.guest_path}; `banger vm ssh {vm.name}` to look")

    async def _bootstrap(self, conn: asyncssh.SSHClientConnection, vm: VM, guest: str, top: set[str],
                         req: api.WorkspacePrepare) -> list[str]:
        """Start ``mise install`` in the background when the repo asks for it; one note either way."""
        if req.no_bootstrap or not plan.wants_bootstrap(top):
            return []
        if (await ssh.exec(conn, plan.MISE_PROBE)).exit_status != 0:
            return ["tool bootstrap skipped: the image has no `mise` (the repo has a mise/asdf config)"]
        if not vm.spec.nat:
            return [f"tool bootstrap skipped: VM {vm.name!r} has no NAT, so mise cannot download tools "
                    f"(`banger vm set {vm.name} --nat`, then run `mise install` in {guest})"]
        res = await ssh.exec(conn, plan.bootstrap_script(guest))
        if res.exit_status != 0:
            return [f"tool bootstrap could not start: {_tail(res.stderr)}"]
        return [f"mise trust + mise install running in the background (log: {plan.BOOTSTRAP_LOG})"]

    # --- export -------------------------------------------------------------------------------------

    async def export(self, req: api.WorkspaceExport) -> api.WorkspaceExportResult:
        """One binary patch of commits, edits and new files in the guest workspace since the base."""
        vm = self.store.get_vm(req.ref)
        async with self.workspace_lock.hold(vm.id):
            vm = self.vms.running_vm(vm.id)
            if vm.workspace is None:
                raise Conflict(f"VM {vm.name!r} has no workspace to export",
                               hint=f"`banger vm workspace prepare {vm.name} PATH` first")
            ws = vm.workspace
            base = req.base_commit or ws.head_commit
            out_dir = Path(vm.vm_dir) / "exports"
            out_dir.mkdir(exist_ok=True)
            dest = out_dir / f"export-{time.time_ns()}.patch"
            try:
                through_agent = await self._export_on_host(vm, ws, base, dest, out_dir)
                if through_agent is None:
                    through_agent = await self._export_via_agent(vm, ws.guest_path, base, dest)
                if through_agent is None:
                    async with await self._connect(vm) as conn:
                        commit, paths = await self._changed(conn, vm, ws.guest_path, base)
                        res = await workspace_stream.drain_to_file(
                            conn, patch.patch_script(ws.guest_path, commit), dest, limit=patch.MAX_PATCH)
                    if res.exit_status != 0:
                        raise GuestError(f"`git diff` in VM {vm.name!r} failed ({res.exit_status}): "
                                         f"{_tail(res.stderr)}")
                else:
                    commit, paths = through_agent
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
        result = _export_result(base, commit, paths, dest)
        if result.export_id is not None:
            self._exports[result.export_id] = dest
        return result

    async def _export_on_host(self, vm: VM, ws: Workspace, base: str, dest: Path,
                              scratch_dir: Path) -> tuple[str, list[str]] | None:
        """The guest names its changed files and sends them through the agent; the host's git makes the
        patch (see workspace.export_host). None when there is no agent or no host repository with the base
        (the caller has the guest make it)."""
        try:
            info = await repo.inspect(Path(ws.host_path), as_user=requesting_user())
        except BangerError:
            return None
        scratch = scratch_dir / f"changes-{secrets.token_hex(4)}"
        scratch.mkdir()
        # The host's half that needs nothing from the guest (the base's tree in a scratch index) runs while
        # the guest lists and sends; only a base given as a full commit id can be known before the guest says.
        ahead = asyncio.ensure_future(export_host.stage_base(info, base, scratch / "ahead")) \
            if plan.COMMIT_RE.fullmatch(base) else None
        try:
            with open(scratch / "stream", "wb") as sink_file:
                sent = 0

                def sink(data: bytes) -> None:
                    nonlocal sent
                    sent += len(data)
                    if sent > export_host.MAX_SENT + (64 << 20):
                        raise GuestError(f"the changes of {ws.guest_path} in VM {vm.name!r} are too big to export",
                                         hint="commit and push from the guest instead")
                    sink_file.write(data)

                started = time.monotonic()
                try:
                    res = await self.vms.exec.run(vm.id, vm.name, export_host.changes_script(ws.guest_path, base),
                                                  on_stdout=sink, timeout=600)
                except GuestError as exc:
                    if exc.data.get("reason") == NO_AGENT:
                        return None
                    raise
            _check_export(res, vm, ws.guest_path, base)
            guest_secs = time.monotonic() - started
            with open(scratch / "stream", "rb") as stream:
                try:
                    staged = await ahead if ahead is not None else None
                    made = await export_host.make_patch(info, stream, scratch / "git", dest, staged)
                except (InvalidArgument, export_host.GuestPatchNeeded):
                    return None  # the host repository lost the base, or a nested repo: the guest's patch
            host_secs = time.monotonic() - started - guest_secs
            log.info("export made on the host", extra={"vm": vm.name, "guest_seconds": round(guest_secs, 2),
                                                        "host_seconds": round(host_secs, 2), "sent_bytes": sent,
                                                        "paths": len(made[1])})
            return made
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
            if ahead is not None:
                await asyncio.gather(ahead, return_exceptions=True)  # its git has exited before the rmtree
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _export_via_agent(self, vm: VM, guest: str, base: str, dest: Path) -> tuple[str, list[str]] | None:
        """Names and patch in one guest pass through the agent, the patch written to ``dest``; None when
        the VM has no agent (the caller uses SSH)."""
        head = bytearray()
        state: dict[str, Any] = {"split": None, "size": 0, "scanned": 0}
        with open(dest, "wb") as out:
            def sink(data: bytes) -> None:
                if state["split"] is None:
                    head.extend(data)
                    # Only look where the end of the list can newly be (a NUL pair may straddle chunks).
                    found = patch.split_export(bytes(head), start=max(0, state["scanned"] - 1))
                    state["scanned"] = len(head)
                    if found is None:
                        if len(head) > patch.MAX_PATCH:
                            raise GuestError(f"the change list of {guest} in VM {vm.name!r} is too long")
                        return
                    state["split"] = found
                    data = bytes(head[found[2]:])
                state["size"] += len(data)
                if state["size"] > patch.MAX_PATCH:
                    raise GuestError(f"the patch of {guest} in VM {vm.name!r} is over {patch.MAX_PATCH >> 20} MiB",
                                     hint="commit and push from the guest instead")
                out.write(data)

            try:
                res = await self.vms.exec.run(vm.id, vm.name, patch.export_script(guest, base), on_stdout=sink,
                                              timeout=600)
            except GuestError as exc:
                if exc.data.get("reason") == NO_AGENT:
                    return None
                raise
        _check_export(res, vm, guest, base, complete=state["split"] is not None)
        commit, paths, _ = state["split"]
        return commit, paths

    async def read_export(self, export_id: str, offset: int) -> api.ExportChunk:
        """The next chunk of a big export; the daemon's copy goes with the last one (never a path to the CLI)."""
        path = self._exports.get(export_id)
        if path is None:
            raise NotFound(f"no export {export_id!r} in progress", hint="run `banger vm workspace export` again")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(patch.CHUNK)
            eof = f.tell() >= os.fstat(f.fileno()).st_size
        if eof:
            self._exports.pop(export_id, None)
            path.unlink(missing_ok=True)
        return api.ExportChunk(data_b64=base64.b64encode(data).decode(), offset=offset + len(data), eof=eof)

    async def _changed(self, conn: asyncssh.SSHClientConnection, vm: VM, guest: str,
                       base: str) -> tuple[str, list[str]]:
        res = await ssh.exec(conn, patch.names_script(guest, base), login_shell=False)
        if res.exit_status == patch.BAD_BASE_STATUS:
            raise InvalidArgument(f"--base-commit {base!r} is not a commit in {guest} in VM {vm.name!r}",
                                  hint="a shallow workspace only has the prepared commit and later ones")
        if res.exit_status != 0:
            raise GuestError(f"listing changes in {guest} in VM {vm.name!r} failed ({res.exit_status}): "
                             f"{_tail(res.stderr)}", hint=f"is {guest} still a git repository?")
        return patch.parse_names(res.stdout)


def _export_result(base: str, commit: str, paths: list[str], dest: Path) -> api.WorkspaceExportResult:
    """Small patches travel inline (base64); big ones stay in ``dest`` and are read over the socket in chunks."""
    size = dest.stat().st_size
    result = api.WorkspaceExportResult(base_ref=base, base_commit=commit, changed_paths=paths, patch_bytes=size)
    if size > patch.INLINE_LIMIT:
        result.export_id = f"x-{secrets.token_hex(8)}"
        return result
    result.patch_b64 = base64.b64encode(dest.read_bytes()).decode()
    dest.unlink()
    return result


def _setup_for(info: repo.RepoInfo, head: str, guest: str, req: api.WorkspacePrepare) -> plan.GuestSetup:
    full = req.mode == "full_copy"
    return plan.GuestSetup(
        guest_path=guest, head=head, branch=req.branch if full else None,
        detach=full and bool(req.from_ref) and not req.branch, checkout=bool(req.from_ref),
        identity=tuple(info.identity.items()))


def _check_export(res: AgentResult, vm: VM, guest: str, base: str, *, complete: bool = True) -> None:
    """The guest's export script ran through the agent: a bad base or a failure as the user should see it."""
    if res.status == patch.BAD_BASE_STATUS:
        raise InvalidArgument(f"--base-commit {base!r} is not a commit in {guest} in VM {vm.name!r}",
                              hint="a shallow workspace only has the prepared commit and later ones")
    if res.status != 0 or not complete:
        raise GuestError(f"exporting {guest} in VM {vm.name!r} failed ({res.status}): {_tail(res.stderr)}",
                         hint=f"is {guest} still a git repository?")


def _tail(data: bytes) -> str:
    return data.decode(errors="replace").strip()[-300:] or "no output on stderr"
