"""Structured JSON logs: one object per line, in a file that rotates at a size cap; floods are throttled."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from datetime import UTC, datetime
from pathlib import Path

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

# Whatever a client provokes, bangerd.log plus its backups stay under 64 MiB: enough for days of normal
# use, small enough that a flood cannot fill the disk.
MAX_BYTES = 16 << 20
BACKUPS = 3
# asyncio logs a failed accept() (EMFILE when out of descriptors) with a traceback up to 100 times a
# second per listener; one line a minute says the same thing.
ACCEPT_ERROR_INTERVAL = 60.0
_ACCEPT_ERROR = "socket.accept() out of system resource"


class JSONFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, every ``extra`` field, and ``exc`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class Throttle:
    """Lets one event through per ``interval`` seconds and counts the ones it held back in between."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last: float | None = None
        self._held = 0

    def allow(self) -> int | None:
        """None to drop this event; otherwise how many were dropped since the last one let through."""
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._held += 1
            return None
        held, self._last, self._held = self._held, now, 0
        return held


class AcceptErrorFilter(logging.Filter):
    """Keeps one line per interval of asyncio's failed-accept errors, without the traceback."""

    def __init__(self, interval: float = ACCEPT_ERROR_INTERVAL):
        super().__init__()
        self.throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_ACCEPT_ERROR):
            return True
        held = self.throttle.allow()
        if held is None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg, record.args = f"{_ACCEPT_ERROR}: new connections wait until descriptors free up", None
        record.exc_info, record.exc_text = None, None
        record.__dict__.update(error=str(exc), suppressed=held)
        return True


def setup(path: Path, level: str, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
    """Send every banger logger to ``path`` as JSON lines, rotating at ``max_bytes`` into ``backups`` files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    aio = logging.getLogger("asyncio")
    aio.filters[:] = [f for f in aio.filters if not isinstance(f, AcceptErrorFilter)]
    aio.addFilter(AcceptErrorFilter())
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("qemu").setLevel(logging.WARNING)
