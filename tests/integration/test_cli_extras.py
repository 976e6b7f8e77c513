"""`banger completion` (live names from the daemon, nothing when it is down), `banger version` and
`bangerd --check-migrations`, through the real CLI against a real bangerd and state.db."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from banger.store.db import LATEST
from banger.testing.artifacts import seed_stopped_vms
from banger.testing.daemon import Home


def _complete(home: Home, words: str) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    proc = home.cli(env={"_BANGER_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert proc.returncode == 0, proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line.startswith("plain,")]


def _seed(home: Home, tmp_path: Path) -> None:
    home.start_daemon()
    home.stop_daemon()
    seed_stopped_vms(home.layout, {"a1b2c3d4e5f6": "alpha", "a1b2c3d4e5f7": "alder", "b1b2c3d4e5f6": "beta"},
                     image="img-one")


def test_completion_offers_live_names_and_nothing_when_the_daemon_is_down(home: Home, tmp_path: Path) -> None:
    script = home.cli("completion", "bash", check=True).stdout
    assert "_BANGER_COMPLETE=bash_complete" in script and "complete -o nosort -F" in script
    for shell in ("zsh", "fish"):
        assert "_BANGER_COMPLETE" in home.cli("completion", shell, check=True).stdout
    assert home.cli("completion", "tcsh").returncode == 2

    _seed(home, tmp_path)
    started = time.monotonic()
    assert _complete(home, "banger vm delete al") == []  # down: nothing, and no daemon started for it
    assert time.monotonic() - started < 5
    assert home.daemon_pid() is None or not Path(f"/proc/{home.daemon_pid()}").exists()

    home.start_daemon()
    assert _complete(home, "banger vm delete al") == ["alder", "alpha"]
    assert _complete(home, "banger vm show ") == ["alder", "alpha", "beta"]
    assert _complete(home, "banger image show i") == ["img-one"]
    assert _complete(home, "banger kernel show ") == []


def test_version_names_the_commit_of_this_checkout(home: Home) -> None:
    info = json.loads(home.cli("version", "--json", check=True).stdout)
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert info["commit"].removesuffix("-dirty") == head
    else:  # .ci/run's copy of the checkout has no .git: the fields say so rather than inventing values
        assert info["commit"] == "unknown"
    from banger import __version__

    assert info["version"] == __version__
    assert "commit" in home.cli("version", check=True).stdout


def test_check_migrations_exit_codes(home: Home) -> None:
    def check() -> int:
        return subprocess.run([sys.executable, "-m", "banger.daemon", "--check-migrations"], env=home.env,
                              capture_output=True, timeout=60).returncode

    assert check() == 0  # no state.db yet
    home.start_daemon()
    home.stop_daemon()
    assert check() == 0  # current
    conn = sqlite3.connect(home.layout.db)
    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from-the-future', '')",
                 (LATEST + 1,))
    conn.commit()
    assert check() == 2
    conn.execute("DELETE FROM schema_migrations WHERE version >= ?", (LATEST,))
    conn.commit()
    conn.close()
    assert check() == 1
