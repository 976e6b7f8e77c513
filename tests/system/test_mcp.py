"""`banger mcp` driven by the official MCP SDK's stdio client, as an agent's MCP host would: the tool list and
schemas, vm_run of `uname -r; exit 3` in a real VM under QEMU TCG (with progress notifications), the
workspace_prepare + vm_exec + workspace_export round trip applied on the host, and tool errors carrying
banger's hint."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from banger.testing.daemon import Home

TOOLS = {"vm_run", "vm_exec", "vm_create", "vm_list", "vm_delete", "vm_ports", "vm_logs", "workspace_prepare",
         "workspace_export"}


def server(home: Home) -> StdioServerParameters:
    """`banger mcp` as an MCP client configuration starts it, in the test's network namespace (where the VMs'
    addresses are reachable, as they are on a host), with the test's daemon already up there."""
    home.cli("daemon", "status", check=True)
    argv = home.cli_argv("mcp")
    return StdioServerParameters(command=argv[0], args=argv[1:], env=home.env)


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, input=input).stdout.decode()


async def call(client: Client, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args, **kw)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_tools_and_vm_run(vm_home: Home) -> None:
    async with Client(server(vm_home), read_timeout_seconds=600) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        run = tools["vm_run"]
        assert run.input_schema["required"] == ["command"]
        assert {"command", "path", "name", "image", "nat", "keep"} <= set(run.input_schema["properties"])
        assert run.output_schema is not None and "exit_code" in run.output_schema["properties"]
        assert all(t.description and len(t.description) > 40 for t in tools.values())

        progress: list[tuple[float, str | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, message))

        out = await call(client, "vm_run", {"command": "uname -r; echo oops >&2; exit 3", "name": "mcp-once"},
                         progress_callback=on_progress)
        assert out["exit_code"] == 3 and out["stdout"].strip().endswith("-amd64") and out["stderr"] == "oops\n"
        assert out["vm"] == "mcp-once" and not out["kept"] and not out["stdout_truncated"]
        assert progress and any(m for _, m in progress)  # the create's stages arrived as notifications
        assert (await call(client, "vm_list", {}))["vms"] == []  # deleted afterwards


async def test_workspace_round_trip_and_errors(vm_home: Home, tmp_path: Path) -> None:
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.invalid", "commit", "-q", "--allow-empty", "-m", "0")
    (repo / "notes.txt").write_text("from the host\n")
    git(repo, "add", "notes.txt")
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "notes")
    async with Client(server(vm_home), read_timeout_seconds=600) as client:
        vm = await call(client, "vm_create", {"name": "mcp-ws"})
        assert vm["state"] == "running" and vm["workspace"] is None
        prepared = await call(client, "workspace_prepare", {"name": "mcp-ws", "path": str(repo)})
        head = git(repo, "rev-parse", "HEAD").strip()
        assert prepared["guest_path"] == "/root/repo" and prepared["head_commit"] == head

        command = "echo 'from the agent' >> notes.txt && pwd && git status --short"
        edited = await call(client, "vm_exec", {"name": "mcp-ws", "command": command})
        assert edited["exit_code"] == 0 and edited["stdout"] == "/root/repo\n M notes.txt\n"
        patch = await call(client, "workspace_export", {"name": "mcp-ws"})
        assert patch["changed_paths"] == ["notes.txt"]
        git(repo, "apply", input=patch["patch"].encode())
        assert (repo / "notes.txt").read_text() == "from the host\nfrom the agent\n"

        assert any(li["port"] == 22 for li in (await call(client, "vm_ports", {"name": "mcp-ws"}))["listeners"])
        assert "Linux version" in (await call(client, "vm_logs", {"name": "mcp-ws", "max_bytes": 1 << 20}))["log"]

        missing = await client.call_tool("vm_exec", {"name": "no-such-vm", "command": "true"})
        assert missing.is_error
        text = missing.content[0].text  # type: ignore[union-attr]
        assert "no-such-vm" in text and "hint:" in text, text

        assert (await call(client, "vm_delete", {"name": "mcp-ws"}))["deleted"] == "mcp-ws"
        assert (await call(client, "vm_list", {}))["vms"] == []
