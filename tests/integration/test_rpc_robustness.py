"""Malformed traffic gets JSON-RPC errors and the daemon keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from banger.testing.daemon import Home


@pytest.fixture
def served(home: Home) -> Iterator[Home]:
    home.start_daemon()
    yield home


def _conn(home: Home) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(str(home.layout.socket))
    return s


def _exchange(home: Home, payload: bytes) -> dict:
    with _conn(home) as s:
        s.sendall(payload)
        line = s.makefile("rb").readline()
    assert line, "the daemon closed the connection without answering"
    return json.loads(line)


def _still_serving(home: Home) -> None:
    with home.client() as c:
        assert c.ping().pid == home.daemon_pid()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"this is not json\n", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"daemon.pi\n', -32700),  # truncated
        (b"[1,2,3]\n", -32600),  # batch
        (b'"just a string"\n', -32600),
        (b'{"jsonrpc":"1.0","id":1,"method":"daemon.ping"}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"no.such.method"}\n', -32601),
        (b'{"jsonrpc":"2.0","id":1,"method":"vm.show","params":{"ref":123}}\n', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"vm.show","params":[1]}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"vm.show","params":{"ref":"x","bogus":1}}\n', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"kernel.list","params":{"available":"maybe"}}\n', -32602),
    ],
)
def test_bad_request_gets_error(served: Home, payload: bytes, code: int) -> None:
    reply = _exchange(served, payload)
    assert reply["error"]["code"] == code, reply
    _still_serving(served)


def test_truncated_frame_then_disconnect(served: Home) -> None:
    with _conn(served) as s:
        s.sendall(b'{"jsonrpc":"2.0","id":1,"meth')
    _still_serving(served)


def test_64_mib_request_is_refused_and_connection_survives(served: Home) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping","params":{"pad":"' + b"x" * (64 << 20) + b'"}}\n'
    with _conn(served) as s:
        s.sendall(big)
        reader = s.makefile("rb")
        reply = json.loads(reader.readline())
        assert reply["error"]["code"] == -32600
        assert "larger than" in reply["error"]["message"]
        s.sendall(b'{"jsonrpc":"2.0","id":2,"method":"daemon.ping"}\n')  # same connection still works
        assert json.loads(reader.readline())["result"]["pid"] == served.daemon_pid()
    _still_serving(served)


def test_notification_gets_no_reply_and_ids_are_echoed(served: Home) -> None:
    with _conn(served) as s:
        s.sendall(b'{"jsonrpc":"2.0","method":"daemon.ping"}\n{"jsonrpc":"2.0","id":"abc","method":"daemon.ping"}\n')
        reply = json.loads(s.makefile("rb").readline())
    assert reply["id"] == "abc" and "result" in reply


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_deep_nesting_gets_parse_error_and_connection_keeps_serving(served: Home, opener: bytes,
                                                                    closer: bytes) -> None:
    deep = opener * 5_000 + b"1" + closer * 5_000  # past the recursion limit of Python's JSON parser
    with _conn(served) as s:
        s.settimeout(10)
        reader = s.makefile("rb")
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping","params":{"x":' + deep + b"}}\n")
        reply = json.loads(reader.readline())
        assert reply["error"]["code"] == -32700 and "too deeply" in reply["error"]["message"], reply
        s.sendall(b'{"jsonrpc":"2.0","id":2,"method":"daemon.ping"}\n')  # same connection still works
        assert json.loads(reader.readline())["result"]["pid"] == served.daemon_pid()
    _still_serving(served)
