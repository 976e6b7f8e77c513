"""Talking to guests.

- ``agent``      the host side of banger-agent: one multiplexed link per guest (exec, clock, RNG, ping).
- ``rehome``     what makes a clone its own machine (clock, RNG, MAC, address, hostname, machine-id, key).
- ``ssh``        asyncssh sessions with banger's key, host keys made and pinned by the daemon; ``ssh`` argv.
- ``provision``  the per-start config disk: authorized_keys, .gitconfig, file_sync files and the host key.
- ``ports``      listening sockets in a guest, parsed from ``ss -H -tulpn``.
"""
