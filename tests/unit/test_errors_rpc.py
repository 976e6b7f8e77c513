"""The exception tree survives the wire; request decoding is strict."""

from __future__ import annotations

import pytest

from banger import rpc
from banger.errors import AlreadyExists, ConfigError, NotFound, from_rpc_error, to_rpc_error


@pytest.mark.parametrize("cls", [NotFound, AlreadyExists, ConfigError])
def test_round_trip_keeps_class_hint_and_data(cls: type) -> None:
    exc = cls("boom", hint="do this", data={"key": "x"})
    back = from_rpc_error(to_rpc_error(exc))
    assert type(back) is cls and back.message == "boom" and back.hint == "do this" and back.data == {"key": "x"}


def test_unexpected_exception_is_internal_error() -> None:
    err = to_rpc_error(RuntimeError("oops"))
    assert err["code"] == -32603 and "RuntimeError" in err["message"]


def test_decode_request() -> None:
    assert rpc.decode_request(b'{"jsonrpc":"2.0","id":7,"method":"a.b"}') == (7, "a.b", {}, False)
    assert rpc.decode_request(b'{"jsonrpc":"2.0","method":"a.b","params":{"x":1}}')[3] is True
    with pytest.raises(ValueError):
        rpc.decode_request(b'{"jsonrpc":"2.0","id":true,"method":"a"}')
