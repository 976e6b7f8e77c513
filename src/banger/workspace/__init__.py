"""Workspaces: a host git repository shipped into a guest, and the guest's changes back as one patch.

Modules (pure logic and host-side git inspection; the daemon's ``workspace_service`` drives them, and the
CLI's ``vm run`` and ``vm exec`` use ``plan`` and ``repo.head_of``):

- ``repo``   inspect the host repository with git: root, HEAD, branch, identity, submodules; the
             work-tree entries to ship (tracked, plus untracked non-ignored on request) with sizes; HEAD
             alone, blocking, for the CLI (``vm exec`` warns when the workspace is behind it).
- ``plan``   what a prepare ships and the guest shell scripts that unpack it: guest path checks, the
             shallow ``.git`` skeleton, the host ``tar`` command line, the setup and mise bootstrap scripts,
             the refusal of a bootstrap without the network, a command through ``mise exec``, and the
             resync that empties a workspace for ``vm exec --auto-prepare``.
- ``patch``  the guest scripts of an export: a throwaway index, ``git add -A``, ``git diff --binary``
             against the base; the inline-vs-file size limit.
- ``image``  a repository as a workspace disk built on the host (staged files, shallow ``.git``, a valid
             index, ``mkfs.ext4 -d``) and the guest script that mounts it.
- ``export_host``  an export whose patch the host's git makes from the changed files the guest sends.
"""
