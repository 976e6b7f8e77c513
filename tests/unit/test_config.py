"""Config parsing: sizes, durations, defaults."""

from __future__ import annotations

import pytest

from banger.config import Config, parse_duration, parse_size


def test_defaults_are_valid() -> None:
    c = Config()
    assert c.runtime == "auto" and c.vm_defaults.vcpu == 2 and c.stale_after_seconds == 0


@pytest.mark.parametrize(("text", "value"), [("8G", 8 << 30), ("512M", 512 << 20), ("1024", 1024), ("2GiB", 2 << 30)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1G", "8 parsecs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800), ("0", 0)])
def test_parse_duration(text: str, value: int) -> None:
    assert parse_duration(text) == value
