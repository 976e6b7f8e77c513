"""Talking to guests.

- ``ssh``        asyncssh sessions with banger's key, host keys pinned in banger's known_hosts; ``ssh`` argv.
- ``provision``  files written into a VM's work disk before start (authorized_keys, .gitconfig, file_sync).
- ``ports``      listening sockets in a guest, parsed from ``ss -H -tulpn``.
"""
