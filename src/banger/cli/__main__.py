"""``python -m banger.cli`` runs the CLI (tests use it to pin the interpreter)."""

from banger.cli.main import main

main()
