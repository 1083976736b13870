"""Where the checkout and `../shared` (reference specs, real city fixtures) are."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # src/urbis/testing/paths.py -> the checkout
SHARED = Path(os.environ.get("URBIS_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
FIXTURES = SHARED / "fixtures"
