"""``banger``: the command line. Thin: parse, call the daemon through the client, render.

- ``main``      the root group, error handling (banger errors -> one or two lines + exit code).
- ``context``   lazily connects the client (auto-starting bangerd).
- ``params``    option types: bad values are click usage errors naming the flag and what it accepts.
- ``render``    tables for people, ``--json`` for scripts.
- ``progress``  polls a daemon operation and draws its stages.
- ``vm`` / ``image`` / ``kernel`` / ``daemon`` / ``doctor``   one module per noun.
- ``vm_run``    ``vm run | ssh | exec | ports``: into guests (commands through the agent, else the system
                ssh with banger's key; interactive use over ssh).
- ``guest_exec``  a command through the daemon and the guest agent: long-polled output, stdin, Ctrl-C.
- ``templates`` ``vm templates list | build | prune``: the snapshot templates clones start from.
- ``workspace`` ``vm workspace prepare | export``: a repo into the guest, its changes back as a patch.
- ``ssh_config``  ``banger ssh-config [--install|--uninstall]``.
- ``system``    ``banger system install|status|restart|uninstall`` (see banger.sysinstall).
- ``completion``  ``banger completion bash|zsh|fish`` and live VM/image/kernel names for it.
- ``mcp``       ``banger mcp``: the MCP server on stdio (banger.mcpserver).
- ``lazy``      groups whose subcommands are imported when they run (simple commands stay fast).
"""

from banger.cli.main import main

__all__ = ["main"]
