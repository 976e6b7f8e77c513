"""JSON-RPC 2.0 messages: one JSON object per line, at most MAX_FRAME bytes; batches are not supported.

Pure encoding and decoding, shared by client and daemon (the daemon's stream reading is in
``daemon.server``, so the CLI does not import asyncio).
"""

from __future__ import annotations

import json
from typing import Any

from banger.errors import INVALID_REQUEST, PARSE_ERROR

MAX_FRAME = 16 << 20
VERSION = "2.0"


def encode(message: dict[str, Any]) -> bytes:
    """One frame: compact JSON plus a newline."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def request(method: str, params: dict[str, Any] | None, id: int | str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": VERSION, "method": method, "params": params or {}}
    if id is not None:
        msg["id"] = id
    return msg


def response(id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": VERSION, "id": id, "result": result}


def error_response(id: Any, error: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": VERSION, "id": id, "error": error}


def parse_error(detail: str) -> dict[str, Any]:
    return {"code": PARSE_ERROR, "message": f"parse error: {detail}"}


def invalid_request(detail: str) -> dict[str, Any]:
    return {"code": INVALID_REQUEST, "message": f"invalid request: {detail}"}


def decode_request(frame: bytes) -> tuple[Any, str, dict[str, Any], bool]:
    """(id, method, params, is_notification); raises ValueError with a JSON-RPC error object as arg."""
    try:
        msg = json.loads(frame)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(parse_error(str(exc))) from None
    except RecursionError:  # json recurses once per nesting level; no request nests this deep
        raise ValueError(parse_error("the message nests arrays or objects too deeply")) from None
    if isinstance(msg, list):
        raise ValueError(invalid_request("batch requests are not supported; send one request per line"))
    if not isinstance(msg, dict):
        raise ValueError(invalid_request("a request must be a JSON object"))
    req_id = msg.get("id")
    if msg.get("jsonrpc") != VERSION:
        raise ValueError(invalid_request('"jsonrpc" must be "2.0"'), req_id)
    method = msg.get("method")
    if not isinstance(method, str) or not method:
        raise ValueError(invalid_request('"method" must be a non-empty string'), req_id)
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(invalid_request('"params" must be an object (named params only)'), req_id)
    if req_id is not None and not isinstance(req_id, (int, str)) or isinstance(req_id, bool):
        raise ValueError(invalid_request('"id" must be a string or an integer'), None)
    return req_id, method, params, "id" not in msg
