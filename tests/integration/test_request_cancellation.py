"""A client that disconnects cancels its in-flight request; operations it started live on until cancelled."""

from __future__ import annotations

import json
import socket
import time

from banger.testing.daemon import Home


def _log_records(home: Home) -> list[dict]:
    return [json.loads(line) for line in home.layout.daemon_log.read_text().splitlines()]


def test_disconnect_cancels_the_request_not_the_operation(home: Home, stalling_mirror: str) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(f'debian_mirror = "{stalling_mirror}"\n')
    home.start_daemon()
    with home.client() as c:
        op = c.kernel_pull("debian-6.1")
        assert op.state == "running"

    waiter = socket.socket(socket.AF_UNIX)
    waiter.connect(str(home.layout.socket))
    request = {"jsonrpc": "2.0", "id": 1, "method": "operation.wait", "params": {"id": op.id, "timeout": 120}}
    waiter.sendall(json.dumps(request).encode() + b"\n")
    time.sleep(0.5)
    waiter.close()  # hang up while the daemon is still waiting on our behalf

    deadline = time.monotonic() + 10
    while not any(r["msg"].startswith("request cancelled") and r.get("method") == "operation.wait"
                  for r in _log_records(home)):
        assert time.monotonic() < deadline, "the daemon never cancelled the abandoned request"
        time.sleep(0.1)
    with home.client() as c:
        assert c.operation(op.id).state == "running", "a disconnect must not cancel the operation itself"
        cancelled = c.operation_cancel(op.id)
        assert cancelled.state == "cancelled"
        assert c.kernel_list().kernels == []
    assert not any(home.layout.kernels_dir.iterdir()), "a cancelled pull leaves nothing behind"
