"""banger: one-command development sandboxes on real microVMs.

Map of the package (a request reads top to bottom):

- ``cli``       click commands, one module per noun; parse, call the client, render.
- ``sdk``       ``from banger import Client``: the Python SDK (create, run, exec, workspaces, images).
- ``mcpserver`` ``banger mcp``: the SDK's operations as MCP tools on stdio, for coding agents.
- ``bounds``    the ranges, word lists and size parser the wire and the CLI's options share (no pydantic).
- ``client``    one typed method per RPC; starts ``bangerd`` on first use.
- ``api``       the wire: every RPC declared once (method name, params model, result model); pydantic-free,
                so the CLI's simple commands start without it. ``wire``: those models (results are models
                all the way down; an operation's result is a tagged union).
- ``rpc``       JSON-RPC 2.0 framing over a Unix socket.
- ``errors``    the exception tree and its JSON-RPC codes.
- ``config`` / ``paths``   the only readers of the environment.
- ``daemon``    ``bangerd``: composition root, the RPC table, services, locks, operations.
- ``rootd``     ``bangerd-root``: a system install's root helper, a fixed list of checked operations.
- ``install`` / ``sysinstall``   ``install.toml`` (the owner, the directories, which daemon a CLI uses);
                ``banger system install|status|restart|uninstall`` and the two units.
- ``buildinfo`` version, commit and build date for ``banger version``.
- ``store``     SQLite state with versioned migrations.
- ``host``      adapters for external systems (subprocesses, VMMs, network, storage).
- ``guest``     talking to guests: the guest agent's link (``agent``), re-homing a clone (``rehome``), SSH
                with pinned host keys, config-disk provisioning, listening ports.
- ``bootargs`` / ``ipam`` / ``names``   pure: guest kernel command line, addresses and MACs, name rules.
- ``model``     the records (VM, Image, Kernel); ``progress`` the Reporter protocol.
- ``files`` / ``threads``   atomic file replacement; blocking work off the event loop.
- ``archive``   unpacking tar members without trusting their names or the tree's symlinks (OCI, .deb).
- ``script``    building shell scripts: every value quoted by one function.
- ``sshconfig`` the ``Host *.vm`` stanza and its Include in ~/.ssh/config.
- ``kernels`` / ``images`` / ``workspace``   formats and pure logic of each (``images.agent``: the guest
                agent's C source and how it is built; ``workspace.image``: a repo as a workspace disk;
                ``workspace.export_host``: the export patch made on the host).
- ``doctor``    read-only host diagnostics.
- ``testing``   helpers the test suite uses (daemon runner, network namespaces, leak and program checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from banger.sdk import Client as Client


def __getattr__(name: str) -> Any:
    """``from banger import Client`` (the SDK), imported on first use so the CLI never pays for it."""
    if name == "Client":
        from banger.sdk import Client

        return Client
    raise AttributeError(f"module 'banger' has no attribute {name!r}")
