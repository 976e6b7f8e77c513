"""``banger mcp``: serve banger's tools to an MCP client (a coding agent) on stdin/stdout."""

from __future__ import annotations

import click


@click.command("mcp")
def mcp() -> None:
    """Serve vm_run, vm_exec, vm_create, vm_list, vm_delete, vm_ports, vm_logs, workspace_prepare and
    workspace_export over MCP on stdio (for an agent's MCP configuration: command `banger`, args ["mcp"])."""
    from banger.mcpserver import main  # the MCP SDK: only this command loads it

    main()
