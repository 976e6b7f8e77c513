"""Helpers the test suite uses, shipped with the package.

- ``netns``        ``NetNS``: a throwaway network namespace for tests (bridges, taps, nft, daemons).
"""
