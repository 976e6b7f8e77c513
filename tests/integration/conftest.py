"""Fixtures for tests that drive a real bangerd on a real socket with the real CLI."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.images import agent as agent_build
from banger.testing.daemon import Home


@pytest.fixture
def home() -> Iterator[Home]:
    h = Home()
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def stalling_mirror() -> Iterator[str]:
    """A loopback "mirror" that accepts connections and never answers (to cancel a pull mid-request)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/debian"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over loopback HTTP, and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = http.server.SimpleHTTPRequestHandler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """banger-agent compiled on the host from the shipped source (static, as in the golden image)."""
    out = tmp_path_factory.mktemp("agent") / "banger-agent"
    subprocess.run(agent_build.compile_argv(agent_build.SOURCE, out), check=True)
    return out
