"""Talking to guests.

- ``ssh``        asyncssh sessions with banger's key, host keys made and pinned by the daemon; ``ssh`` argv.
- ``provision``  the per-start config disk: authorized_keys, .gitconfig, file_sync files and the host key.
- ``ports``      listening sockets in a guest, parsed from ``ss -H -tulpn``.
"""
