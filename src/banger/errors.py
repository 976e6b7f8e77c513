"""The exception tree shared by daemon, client and CLI, and its JSON-RPC error codes.

::

    BangerError                      -32000  (exit 1)
    ├── InvalidArgument              -32602  (exit 2)  bad name, bad flag value, bad params
    │   └── ConfigError              -32010  (exit 2)  config.toml key has a bad value
    ├── NotFound                     -32004  (exit 3)  no such VM / image / kernel / operation
    ├── AlreadyExists                -32009  (exit 4)  name taken
    ├── Conflict                     -32011  (exit 5)  wrong state for the request (VM running, image in use)
    ├── HostError                    -32020  (exit 6)  a host tool or system call failed
    │   └── ToolMissing              -32021  (exit 6)  a required host program is not installed
    ├── GuestError                   -32030  (exit 7)  the guest did not answer / ssh failed
    ├── IntegrityError               -32040  (exit 8)  sha256 or signature mismatch
    ├── FetchError                   -32041  (exit 8)  a download failed
    ├── OperationTimeout             -32050  (exit 9)
    ├── Cancelled                    -32051  (exit 130)
    ├── StoreError                   -32060  (exit 10) the state database is unusable
    ├── PermissionDenied             -32070  (exit 11) peer uid refused at the socket
    ├── DaemonUnavailable            -32080  (exit 12) client could not reach / start bangerd
    └── ProtocolError                -32600  (exit 13) malformed JSON-RPC traffic
        └── MethodNotFound           -32601  (exit 13) the daemon has no such method

Adapters translate library errors into these with ``raise ... from exc``; the daemon turns them into
JSON-RPC error objects in one place (:func:`to_rpc_error`), the client re-raises the same class
(:func:`from_rpc_error`), and the CLI exits with ``exit_code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class BangerError(Exception):
    """Base of every error banger raises on purpose; ``message`` is shown to the user as is."""

    code: ClassVar[int] = -32000
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.data = data or {}

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InvalidArgument(BangerError):
    code = INVALID_PARAMS
    exit_code = 2


class ConfigError(InvalidArgument):
    code = -32010


class NotFound(BangerError):
    code = -32004
    exit_code = 3


class AlreadyExists(BangerError):
    code = -32009
    exit_code = 4


class Conflict(BangerError):
    code = -32011
    exit_code = 5


class HostError(BangerError):
    code = -32020
    exit_code = 6


class ToolMissing(HostError):
    code = -32021


class GuestError(BangerError):
    code = -32030
    exit_code = 7


NO_AGENT = "no-agent"  # GuestError data reason: the VM has no guest agent answering; callers use SSH


class IntegrityError(BangerError):
    code = -32040
    exit_code = 8


class FetchError(BangerError):
    code = -32041
    exit_code = 8


class OperationTimeout(BangerError):
    code = -32050
    exit_code = 9


class Cancelled(BangerError):
    code = -32051
    exit_code = 130


class StoreError(BangerError):
    code = -32060
    exit_code = 10


class PermissionDenied(BangerError):
    code = -32070
    exit_code = 11


class DaemonUnavailable(BangerError):
    code = -32080
    exit_code = 12


class ProtocolError(BangerError):
    code = INVALID_REQUEST
    exit_code = 13


class MethodNotFound(ProtocolError):
    code = METHOD_NOT_FOUND


def _all_subclasses(cls: type[BangerError]) -> list[type[BangerError]]:
    out: list[type[BangerError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_CLASSES: list[type[BangerError]] = [BangerError, *_all_subclasses(BangerError)]
_BY_NAME: dict[str, type[BangerError]] = {c.__name__: c for c in _CLASSES}


def to_rpc_error(exc: BaseException) -> dict[str, Any]:
    """The JSON-RPC error object for ``exc``; unexpected exceptions become INTERNAL_ERROR."""
    if isinstance(exc, BaseExceptionGroup):
        # Cleanup collects every failure; the user sees all of them, as one host error.
        parts = "; ".join(str(e).splitlines()[0] for e in exc.exceptions)
        exc = HostError(f"{exc.message}: {parts}", hint="see `banger daemon logs` for details")
    if isinstance(exc, BangerError):
        data = {"type": type(exc).__name__, **exc.data}
        if exc.hint:
            data["hint"] = exc.hint
        return {"code": exc.code, "message": exc.message, "data": data}
    return {
        "code": INTERNAL_ERROR,
        "message": f"internal error: {type(exc).__name__}: {exc}",
        "data": {"type": "InternalError", "hint": "see `banger daemon logs` for the traceback"},
    }


def invalid_params(what: str, exc: Any) -> InvalidArgument:
    """pydantic's ValidationError ``exc`` (duck-typed: this module never imports pydantic) as banger's
    InvalidArgument, ``WHAT: FIELD: MESSAGE`` for its first error."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "params"
    return InvalidArgument(f"{what}: {field}: {first['msg']}")


class _Dumpable(Protocol):
    def model_dump(self, *, exclude_none: bool) -> dict[str, Any]: ...


def from_rpc_error(error: Mapping[str, Any] | _Dumpable) -> BangerError:
    """Rebuild the banger exception the daemon raised from its JSON-RPC error object (a dict off the wire,
    or the ``wire.ErrorInfo`` a typed result carries)."""
    if not isinstance(error, Mapping):
        error = error.model_dump(exclude_none=True)
    data = dict(error.get("data") or {})
    name = data.pop("type", None)
    hint = data.pop("hint", None)
    cls = _BY_NAME.get(str(name))
    if cls is None:
        code = error.get("code")
        cls = {
            PARSE_ERROR: ProtocolError,
            INVALID_REQUEST: ProtocolError,
            METHOD_NOT_FOUND: MethodNotFound,
            INVALID_PARAMS: InvalidArgument,
        }.get(code, BangerError)  # type: ignore[arg-type]
    return cls(str(error.get("message", "unknown error")), hint=hint, data=data)
