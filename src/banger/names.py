"""Validation of user-given names (VMs, images, kernels): checked once, at the edge."""

from __future__ import annotations

import re

from banger.errors import InvalidArgument

NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
VM_ID_RE = re.compile(r"[0-9a-f]{12}")  # the shape of a VM id (vm_create.new_vm: secrets.token_hex(6))


def validate_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid ``kind`` name (``vm``, ``image``, ``kernel``), else InvalidArgument.

    A name is 1-63 characters of lowercase letters, digits, ``-`` and ``.``, starting with a letter or
    digit, never ``..``-style path traversal and never anything a shell would interpret. A VM name never
    has the shape of a VM id (12 lowercase hex characters): commands take either, so one VM's name could
    otherwise stand for another VM's id.
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value or value.endswith("."):
        raise InvalidArgument(
            f"invalid {kind} name {value!r}",
            hint="use 1-63 lowercase letters, digits, '-' or '.', starting with a letter or digit "
            "(e.g. debian-6.1)",
        )
    if kind == "vm" and VM_ID_RE.fullmatch(value):
        raise InvalidArgument(f"invalid vm name {value!r}: it looks like a VM id (12 hex digits), and VM "
                              "commands accept ids and names alike",
                              hint="pick a name that is not 12 characters of 0-9a-f, e.g. with a '-' in it")
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
