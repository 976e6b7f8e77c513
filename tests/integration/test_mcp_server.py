"""`banger mcp` over stdio with the mcp SDK's client against a real daemon, for what needs no VM: the tools an
agent sees, and refusals that must come back as tool errors carrying banger's hint, before any VM exists."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from banger.testing.daemon import Home


@pytest.fixture
def mcp_server(home: Home) -> StdioServerParameters:
    home.start_daemon()
    return StdioServerParameters(command=home.cli_argv()[0], args=[*home.cli_argv()[1:], "mcp"], env=home.env)


def _error_text(result: Any) -> str:
    assert result.is_error, result
    return str(result.content[0].text)


async def test_tools_have_schemas_and_descriptions(mcp_server: StdioServerParameters) -> None:
    async with Client(mcp_server, read_timeout_seconds=60) as client:
        assert client.server_info.name == "banger"
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sorted(tools) == sorted(["vm_run", "vm_exec", "vm_create", "vm_list", "vm_delete", "vm_ports",
                                        "vm_logs", "workspace_prepare", "workspace_export"])
        for tool in tools.values():
            assert tool.output_schema is not None and tool.description, tool.name
            assert "ctx" not in tool.input_schema["properties"], tool.name  # the progress context is injected
        props = tools["vm_run"].input_schema["properties"]
        assert props["keep"]["default"] is False and "description" in props["command"]
        assert props["path"]["anyOf"][0] == {"type": "string"}
        assert tools["vm_create"].input_schema["properties"]["vcpu"]["anyOf"][0]["maximum"] == 64
        assert (await client.call_tool("vm_list", {})).structured_content == {"vms": []}


async def test_refusals_are_tool_errors_with_the_hint_and_make_no_vm(mcp_server: StdioServerParameters,
                                                                      tmp_path: Path, home: Home) -> None:
    repo = tmp_path / "tools-repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".mise.toml").write_text('[tools]\npython = "3.12"\n')
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.invalid", "commit",
                    "-q", "-m", "tools"], check=True)
    async with Client(mcp_server, read_timeout_seconds=60) as client:
        text = _error_text(await client.call_tool("vm_run", {"command": "true", "path": str(repo)}))
        assert ".mise.toml" in text and "--nat" in text and "--no-bootstrap" in text, text
        text = _error_text(await client.call_tool("vm_exec", {"name": "ghost", "command": "true"}))
        assert "ghost" in text and "hint:" in text, text
        text = _error_text(await client.call_tool("vm_create", {"vcpu": 0}))
        assert "vcpu" in text, text
        text = _error_text(await client.call_tool("workspace_prepare", {"name": "ghost", "path": str(tmp_path)}))
        assert "git" in text or "ghost" in text, text
        assert (await client.call_tool("vm_list", {})).structured_content == {"vms": []}
    assert "vm.create" not in home.cli("daemon", "operations", check=True).stdout  # no create was started
