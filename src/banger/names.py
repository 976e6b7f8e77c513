"""Validation of user-given names (VMs, images, kernels): checked once, at the edge."""

from __future__ import annotations

import re

from banger.errors import InvalidArgument

NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")


def validate_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid ``kind`` name (``vm``, ``image``, ``kernel``), else InvalidArgument.

    A name is 1-63 characters of lowercase letters, digits, ``-`` and ``.``, starting with a letter or
    digit, never ``..``-style path traversal and never anything a shell would interpret.
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value or value.endswith("."):
        raise InvalidArgument(
            f"invalid {kind} name {value!r}",
            hint="use 1-63 lowercase letters, digits, '-' or '.', starting with a letter or digit "
            "(e.g. debian-6.1)",
        )
    return value


_ADJECTIVES = ("amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hazy", "icy", "jolly", "keen",
               "lucky", "misty", "noble", "odd", "proud", "quiet", "rapid", "sunny", "tidy", "vivid", "witty")
_NOUNS = ("otter", "falcon", "badger", "heron", "lynx", "marten", "newt", "orca", "panda", "quail", "raven",
          "stoat", "tapir", "urchin", "vole", "walrus", "yak", "zebra", "bison", "crane", "dingo", "egret")


def generate_vm_name(taken: set[str], entropy: bytes) -> str:
    """A friendly unused VM name such as ``brisk-otter`` (``-2``, ``-3``... appended on collision)."""
    base = f"{_ADJECTIVES[entropy[0] % len(_ADJECTIVES)]}-{_NOUNS[entropy[1] % len(_NOUNS)]}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name
