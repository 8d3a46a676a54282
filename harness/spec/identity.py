"""Content identity of a spec: the canonical JSON a config is hashed from and its run id, so the
same settings get the same id wherever they are validated, submitted or stored."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def canonical_json(config: Mapping[str, object]) -> str:
    """Key-sorted, whitespace-free JSON: the form a run id is hashed from."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: Mapping[str, object]) -> str:
    """sha256 of the canonical config JSON (first 16 hex digits)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]
