"""Adapters for the external systems banger drives; nothing here imports from above ``banger.host``.

- ``run``          the only subprocess spawner (run / run_sync / start / spawn_detached).
- ``net``          bridge and TAP links over netlink (pyroute2), idempotent.
- ``nat``          outbound NAT for guests in one nftables table (``inet banger``) + ip_forward.
- ``netns``        named network namespaces (``ip netns``): add, delete, pids, exec argv.
- ``loopdev``      loop devices (losetup): attach ro/rw, detach, find, list banger's.
- ``dm``           device-mapper snapshots (dmsetup) for ``banger-*`` devices, availability check.
- ``storage``      per-VM disks: copy-on-write root disk (dm/qcow2/reflink/sparse copy), work disk.
- ``privileged``   the one seam for root-only operations (Protocol + in-process LocalPrivileged).
"""
