"""SQLite state (``state.db``): the durable facts about VMs, images and kernels.

- ``db``          open (WAL, foreign keys, busy timeout), read-only open, apply migrations.
- ``migrations``  the ordered schema migrations; each runs once, in its own transaction.
- ``repo``        typed reads and writes of VM, image and kernel rows.

Transient process handles (pids, taps, devices, sockets) are not stored here: they live in the daemon's
memory and each VM's ``handles.json``.
"""
