"""``jailer = auto|true|false`` and ``jailer_bin``: what the config accepts and what each setting decides."""

from __future__ import annotations

import pytest

from banger import config
from banger.daemon.runtime import jail_decision
from banger.errors import ConfigError


def test_defaults_are_auto_and_the_name_on_path() -> None:
    cfg = config.Config()
    assert cfg.jailer == "auto" and cfg.jailer_bin == "jailer"


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_the_three_settings_are_accepted(value: object) -> None:
    assert config.from_mapping({"jailer": value, "jailer_bin": "/opt/fc/jailer"}).jailer == value


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "always", None])
def test_anything_else_is_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"jailer": value})
    assert err.value.message == 'config: key \'jailer\': must be "auto", true or false'


def test_false_never_jails_and_says_nothing() -> None:
    assert jail_decision(False, "jailer", "/usr/local/bin/jailer", True) == (False, "")


def test_auto_and_true_jail_when_the_jailer_is_found_and_root_is_at_hand() -> None:
    for setting in ("auto", True):
        use, note = jail_decision(setting, "jailer", "/usr/local/bin/jailer", True)
        assert use and "/usr/local/bin/jailer" in note


@pytest.mark.parametrize(("found", "root", "why"), [
    (None, True, "no jailer was found at 'jailer'"),
    ("/usr/local/bin/jailer", False, "the jailer needs root"),
])
def test_auto_falls_back_with_one_note_and_true_is_an_error(found: str | None, root: bool, why: str) -> None:
    use, note = jail_decision("auto", "jailer", found, root)
    assert not use and note.startswith("jailer auto: plain Firecracker, because ") and why in note
    use, note = jail_decision(True, "jailer", found, root)
    assert not use and note.startswith("jailer = true in config.toml, but ") and why in note
