"""A throwaway network namespace for tests: bridges, taps, nft rules and daemons under test live in it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Sequence
from types import TracebackType

from banger.host import netns
from banger.host.netns import netns_argv
from banger.host.run import Completed, run_sync

__all__ = ["NetNS", "netns_argv"]


class NetNS:
    """``with NetNS() as ns:``: namespace ``ns.name``, ``lo`` up; on exit, kill what runs in it, delete it."""

    def __init__(self, name: str | None = None):
        run = os.environ.get("BANGER_TEST_RUN")  # a test run's namespaces carry its id (banger.testing.leaks)
        default = f"bgtest-{run}-{uuid.uuid4().hex[:6]}" if run else f"bgtest-{uuid.uuid4().hex[:8]}"
        self.name = netns.check_name(name or default)

    def __enter__(self) -> NetNS:
        if netns.exists(self.name):
            self.close()
        netns.add(self.name)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped in ``ip netns exec``."""
        return netns_argv(self.name, argv)

    def run(self, argv: Sequence[str], *, check: bool = True, input: bytes | None = None) -> Completed:
        """Run ``argv`` inside the namespace and wait for it."""
        return run_sync(self.argv(argv), check=check, input=input, timeout=120)

    def close(self) -> None:
        """Kill every process still inside, then delete the namespace (idempotent)."""
        deadline = time.monotonic() + 10
        while (pids := netns.pids(self.name)) and time.monotonic() < deadline:
            for pid in pids:
                _kill(pid)
            time.sleep(0.05)
        netns.delete(self.name)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
