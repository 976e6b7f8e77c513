"""Text from outside reaches the terminal with rich markup escaped and control characters stripped: the
real CLI against a real bangerd, with hostile text planted where images, guests and arguments put it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banger.cli import render
from banger.images.manifest import ImageManifest, write_manifest
from banger.model import VM, Image, VMSpec
from banger.store.db import open_db
from banger.store.repo import Store
from banger.testing.daemon import Home

HOSTILE_DISTRO = "[/x] [bold]b[/bold] :smile: \x1b]0;pwned\x07\x1b[31mred\u202eevil"
CONSOLE = (b"boot \x1b[31mred\x1b[0m ok\r\n\x1b]0;pwned title\x07after-title\n\x1b]52;c;Y2xpcA==\x1b\\clip "
           b"bell\x07 bs\x08 nul\x00 [/x] [bold]b\n\x1bPdcs\x1b\\\x1b7saved\x1b8 \xc2\x9b2Jc1-csi\n\tend\n")


def _stopped_home(home: Home) -> Store:
    """A home whose daemon has made its database and stopped, so rows can be planted in it."""
    home.start_daemon()
    home.stop_daemon()
    return Store(open_db(home.layout.db))


def _plant_image(home: Home, store: Store, name: str, distro: str = "debian") -> None:
    """An image row and its directory's manifest (the daemon drops rows whose directory is missing)."""
    directory = home.layout.images_dir / name
    directory.mkdir(parents=True)
    manifest = ImageManifest(name=name, distro=distro, kernel_ref="k", source="register")
    write_manifest(directory, manifest)
    store.put_image(Image(name=name, distro=distro, kernel_ref="k", source="register", dir=str(directory),
                          manifest=manifest.model_dump(mode="json")))


def test_a_markup_path_gives_a_clean_one_line_error(home: Home) -> None:
    res = home.cli("image", "pull", "/tmp/[/x].tar.zst")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "MarkupError" not in res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith("error: ") and "/tmp/[/x].tar.zst" in lines[0], res.stderr
    assert all(line.startswith("  hint: ") for line in lines[1:]) and len(lines) <= 2, res.stderr


def test_escape_sequences_in_an_error_never_reach_the_terminal(home: Home) -> None:
    res = home.cli("image", "pull", "/tmp/\x1b]0;pwned\x07[red]x[/red].tar.zst")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert "[red]x[/red]" in res.stderr


def test_an_image_with_a_markup_distro_lists_literally(home: Home) -> None:
    store = _stopped_home(home)
    _plant_image(home, store, "weird", HOSTILE_DISTRO)
    store.close()
    expected = "[/x] [bold]b[/bold] :smile: redevil"
    for args in (("image", "list"), ("image", "show", "weird")):
        res = home.cli(*args)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        assert expected in res.stdout, res.stdout
        assert not set(res.stdout) & {"\x1b", "\x07", "\u202e"}
    listed = json.loads(home.cli("image", "list", "--json", check=True).stdout)
    assert listed[0]["distro"] == HOSTILE_DISTRO  # --json carries the exact value


@pytest.fixture
def noisy_vm(home: Home, tmp_path: Path) -> str:
    """A registered (stopped) VM whose console.log is full of escape sequences and control characters."""
    store = _stopped_home(home)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    (vm_dir / "console.log").write_bytes(CONSOLE)
    _plant_image(home, store, "img")
    store.insert_vm(VM(id="a1b2c3d4e5f6", name="noisy", spec=VMSpec(image="img"), state="stopped",
                       vm_dir=str(vm_dir)))
    store.close()
    return "noisy"


def test_vm_logs_strips_escape_sequences_unless_raw(home: Home, noisy_vm: str) -> None:
    res = home.cli("vm", "logs", noisy_vm)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert not [c for c in out if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0], repr(out)
    assert out == ("boot red ok\nafter-title\nclip bell bs nul [/x] [bold]b\nsaved c1-csi\n\tend\n")
    raw = home.cli("vm", "logs", noisy_vm, "--raw")
    assert raw.returncode == 0, raw.stderr
    assert "\x1b[31mred" in raw.stdout and "\x1b]0;pwned title\x07" in raw.stdout


def test_clean_keeps_text_and_drops_sequences() -> None:
    assert render.clean("a\x1b[1;31mb\x1b[0m\x1b]8;;http://x\x1b\\c\x1b]8;;\x1b\\\x9b2Jd\x00e\u202ef") == "abcdef"
    assert render.clean("l1\nl2\tx\r\n") == "l1l2x"
    assert render.clean("l1\nl2\tx\r\n", keep="\n\t") == "l1\nl2\tx\n"
    assert render.clean("naïve ✓ 日本 [/x] :smile:") == "naïve ✓ 日本 [/x] :smile:"
    assert render.clean(None) == "" and render.clean(42) == "42"


def test_a_stream_cleaned_in_chunks_loses_whole_sequences() -> None:
    text, held = render.split_unfinished("a\x1b[3")
    assert (text, held) == ("a", "\x1b[3")
    assert render.clean(held + "1mred") == "red"
    assert render.split_unfinished("a\x1b[31mb") == ("a\x1b[31mb", "")
    assert render.split_unfinished("a\x1b]0;tit") == ("a", "\x1b]0;tit")


def test_clean_is_linear_on_hostile_input() -> None:
    import time

    started = time.monotonic()
    for bomb in ("\x1b]" * 300_000, "\x9d" * 600_000, "\x1b[" + "0" * 600_000, "\x1bP" * 300_000):
        render.clean(bomb)
        render.split_unfinished(bomb)
    assert time.monotonic() - started < 5
