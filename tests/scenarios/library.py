"""Loading the ready rulesets of rules/library for scenario tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LIBRARY = Path(__file__).resolve().parents[2] / "rules" / "library"


def library_ruleset(name: str) -> dict[str, Any]:
    """One ruleset document from rules/library by file stem."""
    return dict(json.loads((LIBRARY / f"{name}.json").read_text()))


def library_names() -> list[str]:
    """Every ruleset in the library."""
    return sorted(path.stem for path in LIBRARY.glob("*.json"))
