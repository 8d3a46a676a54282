"""``python -m harness.cli``: the same entry point as ``harness``."""

import sys

from harness.cli import main

sys.exit(main())
