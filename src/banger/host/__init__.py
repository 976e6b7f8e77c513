"""Adapters for the external systems banger drives; nothing here imports from above ``banger.host``.

- ``run``          the only subprocess spawner (run / run_sync / start / spawn_detached).
- ``http``         downloads: streamed to a staging file, sha256-checked, renamed into place when whole.
- ``ext4``         ext4 images via e2fsprogs: mkfs.ext4 -d (no mount), debugfs, e2fsck -fn checks, grow
                   (only of filesystems banger built itself: never of a disk a guest wrote).
- ``net``          bridge and TAP links over netlink (pyroute2), idempotent.
- ``nat``          outbound NAT for guests in one nftables table (``inet banger``) + ip_forward.
- ``tapfilter``    each TAP passes only its VM's MAC and IPv4 address (``bridge banger``), and marks it for NAT.
- ``netns``        named network namespaces (``ip netns``): add, delete, pids, exec argv.
- ``loopdev``      loop devices (losetup): attach ro/rw, detach, find, list banger's.
- ``dm``           device-mapper snapshots (dmsetup) for ``banger-*`` devices, availability check.
- ``storage``      per-VM disks: copy-on-write root disk (dm/qcow2/reflink/sparse copy), work disk.
- ``privileged``   the one seam for root-only operations (Protocol; LocalPrivileged in process, as root;
                   RemotePrivileged asks bangerd-root over its socket, loop files as SCM_RIGHTS descriptors).
- ``userns``       user namespaces for the owner's image work: its subordinate-id map (written by the
                   privileged seam), the child that waits for it, becomes root inside and execs the work.
- ``vmm``          the VMM interface (LaunchSpec, Handle, VMM protocol, driver_for) + shared process plumbing.
- ``firecracker``  Firecracker driver: API-socket configuration, InstanceStart, Ctrl-Alt-Del stop, versions.
- ``jail``         the jailer's layout (root's, beside the state dir: <state>-jail), the jailed launch,
                   recognising a jailed VMM.
- ``qemu``         QEMU ``-M microvm`` driver (KVM or TCG), controlled over QMP.
- ``firecracker_release``  install the official v1.12.1 binary (sha256-pinned) from its release tarball.
- ``kvm_probe``    cached Firecracker boot probe and ``select_runtime`` (auto / firecracker / qemu).
- ``resolved``     route ``*.vm`` on the bridge link to banger's DNS server via systemd-resolved (resolvectl).
"""
