"""``python -m planner`` runs the ``moe-planner`` command line."""

import sys

from planner.cli import main

sys.exit(main())
