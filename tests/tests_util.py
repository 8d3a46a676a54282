"""Helpers shared by tests (plain module: importable from the tests folder)."""

import sys
from pathlib import Path

HARNESS = str(Path(sys.executable).with_name("harness"))
