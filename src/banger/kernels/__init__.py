"""Guest kernels: the embedded catalog, building banger's default kernel from Debian, the local store.

Map of the package (a pull reads top to bottom):

- ``catalog``         ``catalog.json`` + its pydantic models: pullable kernels (Debian-built or ready URLs).
- ``local``           the store under ``<state>/kernels/<name>/``: list, get, pull, import, remove (staged,
                      atomic rename, nothing left on failure or cancellation).
- ``build``           ``build_debian_kernel``: resolve, download, extract, assemble vmlinux/initrd/modules.ext4.
- ``debian_archive``  the signed-index chain: InRelease (gpgv) -> Packages.xz (sha256) -> .deb (sha256, size).
- ``debversion``      Debian version ordering (``dpkg --compare-versions``), pure.
- ``deb``             reading .deb files (ar + data.tar.{xz,zst,gz}) in pure Python.
- ``vmlinux``         the ELF vmlinux out of an xz bzImage, pure.
- ``elf``             minimal ELF64 header/section parsing, pure.
- ``modules``         ``.modinfo`` parsing, dependency load order, the guest's boot set, ``modules.dep`` text.
- ``cpio``            the newc cpio writer/reader, pure.
- ``initrd``          the initrd layout: busybox + applet links + boot modules + ``files/init``.
- ``manifest``        ``manifest.json``: provenance and sha256 of each installed kernel file.
- ``files/init``      the busybox-sh PID 1: modules, ``ip=``, ``root=``, ``banger.modules=``, probe, switch_root.

Installed kernel layout: ``vmlinux`` (always), ``initrd.img`` and ``modules.ext4`` (Debian-built),
``manifest.json``. ``modules.ext4`` is meant to be attached read-only and named by
``banger.modules=/dev/vdX``; the init mounts it at ``/lib/modules/<uname -r>`` in the guest.
"""
