"""bangerd-root: the small root helper of a system install; everything else runs as the owner.

Modules:

- ``__main__``  ``python -m banger.rootd``: runs ``main``.
- ``main``    entry point (``python -m banger.rootd --install PATH``, the unit's ``ExecStart=``): reads
              ``install.toml`` and the root-owned config, makes its runtime dir, serves until SIGTERM.
- ``policy``  Policy: every argument of every operation checked against banger's own configuration (the
              bridge and CIDR, TAP prefix, banger's nftables table, loop files under the state dir passed as
              descriptors, dm devices only over loops of such files, resolver routing only on the bridge,
              id maps only for an owner's fresh user namespace, and only the owner's subordinate block).
- ``server``  the socket (``bangerd-root.sock``: dir 0711, socket 0600 owned by the owner): SO_PEERCRED
              allows uid 0 and the owner only; one request per connection; the operations run one at a time.

The helper keeps no state: what exists on the host (links, nft rules, loop and dm devices) is the state,
so a restarted helper loses nothing. The operations themselves are ``host.privileged.LocalPrivileged``.
"""
