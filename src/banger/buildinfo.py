"""Where this banger came from: version, commit and build date (``banger version``).

A package may carry ``_build.json`` (``{"commit", "build_date"}``, written by whoever builds it); a source
checkout answers from git; otherwise the commit and date are ``unknown``.
"""

from __future__ import annotations

import json
from pathlib import Path

from banger import __version__

HERE = Path(__file__).resolve().parent


def read() -> dict[str, str]:
    info = {"version": __version__, "commit": "unknown", "build_date": "unknown"}
    stamped = HERE / "_build.json"
    if stamped.is_file():
        data = json.loads(stamped.read_text())
        info.update({k: str(data[k]) for k in ("commit", "build_date") if k in data})
        return info
    checkout = HERE.parents[1]
    if (checkout / ".git").exists():
        from banger.errors import BangerError
        from banger.host.run import run_sync

        try:
            out = run_sync(["git", "-C", checkout, "log", "-1", "--format=%h %cI"], check=False).out.split()
            dirty = run_sync(["git", "-C", checkout, "status", "--porcelain", "--untracked-files=no"],
                             check=False).out.strip()
        except BangerError:  # no git on this host
            return info
        if len(out) == 2:
            info["commit"] = out[0] + ("-dirty" if dirty else "")
            info["build_date"] = f"{out[1]} (source checkout: the commit's date)"
    return info
