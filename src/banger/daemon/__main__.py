"""``python -m banger.daemon`` runs bangerd (the CLI starts it this way, so versions always match)."""

import sys

from banger.daemon.main import main

sys.exit(main())
