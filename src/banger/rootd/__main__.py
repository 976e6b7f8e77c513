"""``python -m banger.rootd`` runs bangerd-root (what ``bangerd-root.service`` starts)."""

import sys

from banger.rootd.main import main

sys.exit(main())
