"""The initrd's init script: valid busybox sh, and its helpers behave."""

from __future__ import annotations

from banger.host.run import run
from banger.kernels.initrd import init_script


async def test_init_parses_with_busybox_sh() -> None:
    result = await run(["busybox", "sh", "-n"], input=init_script(), check=False)
    assert result.returncode == 0, result.err


async def _call(function: str, *args: str) -> str:
    # Run only the init's function definitions (everything before the main sequence), then one call.
    script = init_script().decode()
    defs = script[: script.index("mkdir -p /proc /sys /dev /newroot")]
    code = defs + f'\n{function} {" ".join(args)}\n'
    return (await run(["busybox", "sh", "-c", code])).out.strip()


async def test_mask_bits() -> None:
    assert await _call("mask_bits", "255.255.255.0") == "24"
    assert await _call("mask_bits", "255.255.252.0") == "22"
    assert await _call("mask_bits", "255.255.255.255") == "32"


async def test_wait_for_path_gives_up() -> None:
    out = await _call("wait_for_path", "/nonexistent-banger", "2", "||", "echo", "gave-up")
    assert out == "gave-up"


async def test_init_handles_documented_parameters() -> None:
    text = init_script().decode()
    for param in ("root=", "rootfstype=", "init=", "ip=", "banger.modules=", "banger.probe=1",
                  "banger.debug=1", "BANGER-PROBE-OK", "switch_root"):
        assert param in text
