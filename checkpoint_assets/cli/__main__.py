"""``python -m checkpoint_assets.cli``: the command line, as the console script runs it."""

import sys

from checkpoint_assets.cli import main

sys.exit(main())
