"""Image formats and the pipelines that produce them: every image is ``rootfs.ext4`` + ``work-seed.ext4``
+ ``manifest.json`` in one directory.

- ``manifest``: ``manifest.json`` (:class:`ImageManifest`), read and written atomically.
- ``local``: the local image store, ``<state>/images/<name>/``: list/get/remove, staging beside the
  target + atomic rename, ``register`` of an existing ext4 rootfs.
- ``golden``: the Debian bookworm golden image, built with mmdebstrap and cached by its inputs.
- ``seed``: the work seed that fills a new VM's work disk (``/root``), rebuilt from a rootfs with debugfs.
- ``bundle``: ``.tar.zst`` export/import (manifest + rootfs, content-addressed names, sha256-checked).
- ``catalog``: ``catalog.json``, published bundles by name (url, sha256, kernel_ref, description).
- ``oci_registry``: registry v2 client (references, bearer tokens, manifests, manifest lists) and the
  content-addressed blob cache with its prune rule.
- ``oci_layers``: flattens layer tarballs (gzip/zstd/plain) with whiteouts, owners and escape checks.
- ``oci_boot``: boot glue for container trees (systemd units, or ``/sbin/banger-init`` on ``/bin/sh``).
- ``oci_pull``: ``banger image pull``: registry image -> bootable banger image.
- ``rootless``: the golden build and the OCI flatten as the owner, in a child that is root of a user
  namespace mapped onto the owner's subordinate ids (``host.userns``), its stages relayed as JSON lines.
- ``agent``: banger-agent's C source, its compiler command line and where it lives in a guest.
- ``files/``: guest files installed into images (network script and units, fstab, sshd drop-in, init).
"""
