"""Long-running operations (VM create, image build/pull, kernel pull): staged, polled, cancellable.

An operation runs as a task owned by the daemon, not by the connection that started it, so a CLI that
disconnects does not kill a build half way; ``operation.cancel`` does, and the work's undo stack cleans up.
Finished operations are kept (bounded) so a late poll still sees the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from banger.errors import INTERNAL_ERROR, Cancelled, NotFound, to_rpc_error
from banger.model import now
from banger.wire import ErrorInfo, Operation, OperationResult

log = logging.getLogger("banger.daemon.operations")
KEEP_FINISHED = 200

Work = Callable[["OperationReporter"], Awaitable[OperationResult | None]]


class OperationReporter:
    """The Reporter handed to an operation's work; it writes straight into the Operation record."""

    def __init__(self, op: Operation):
        self.op = op
        self._stage_started = time.monotonic()

    def stage(self, name: str) -> None:
        self.finish_stage()
        self.op.stage = name
        self.op.stages.append(name)
        self.op.done, self.op.total = 0, None
        log.info("operation stage", extra={"op": self.op.id, "kind": self.op.kind, "stage": name})

    def progress(self, done: int, total: int | None = None) -> None:
        self.op.done, self.op.total = done, total

    def finish_stage(self) -> None:
        """Record how long the current stage took (benchmarks read these)."""
        if self.op.stage:
            self.op.timings[self.op.stage] = round(time.monotonic() - self._stage_started, 4)
        self._stage_started = time.monotonic()

    def log(self, message: str) -> None:
        self.op.log.append(message)
        log.info("operation log", extra={"op": self.op.id, "line": message})

    def note(self, message: str) -> None:
        self.op.notes.append(message)
        self.log(message)


class Operations:
    """Registry of operations by id."""

    def __init__(self) -> None:
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, kind: str, target: str, work: Work) -> Operation:
        op = Operation(id=f"op-{secrets.token_hex(4)}", kind=kind, target=target)
        self._ops[op.id] = op
        self._tasks[op.id] = asyncio.create_task(self._run(op, work), name=op.id)
        self._trim()
        return op

    async def _run(self, op: Operation, work: Work) -> None:
        reporter = OperationReporter(op)
        try:
            op.result = await work(reporter)
            op.state = "succeeded"
        except asyncio.CancelledError:
            op.state = "cancelled"
            op.error = ErrorInfo.model_validate(to_rpc_error(Cancelled(f"{op.kind} {op.target} was cancelled")))
        except Exception as exc:
            op.state = "failed"
            op.error = ErrorInfo.model_validate(to_rpc_error(exc))
            log.log(logging.INFO if op.error.code != INTERNAL_ERROR else logging.ERROR,
                    "operation failed", extra={"op": op.id}, exc_info=op.error.code == INTERNAL_ERROR)
        finally:
            reporter.finish_stage()
            op.finished_at = now()
            self._tasks.pop(op.id, None)

    def get(self, op_id: str) -> Operation:
        op = self._ops.get(op_id)
        if op is None:
            raise NotFound(f"no operation {op_id!r}", hint="`banger daemon operations` lists recent ones")
        return op

    def list(self) -> list[Operation]:
        return list(self._ops.values())

    def running(self) -> int:
        return len(self._tasks)

    async def wait(self, op_id: str, timeout: float) -> Operation:
        """The operation once it ends, or as it stands after ``timeout`` seconds."""
        op = self.get(op_id)
        task = self._tasks.get(op_id)
        if task is not None:
            await asyncio.wait([task], timeout=timeout)
        return op

    async def cancel(self, op_id: str) -> Operation:
        op = self.get(op_id)
        task = self._tasks.get(op_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        return op

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _trim(self) -> None:
        finished = [k for k, v in self._ops.items() if v.state != "running"]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._ops[key]
