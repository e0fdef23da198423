"""Docs stay true: every test docs/THREAT_MODEL.md names exists, and each attack row names one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_threat_model_names_only_existing_tests():
    text = (ROOT / "docs" / "THREAT_MODEL.md").read_text()
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    modules = {path.stem for path in (ROOT / "tests").glob("test_*.py")}  # `test_x.py::` prefixes
    named = set(re.findall(r"\b(test_\w+)\b", text)) - modules
    missing = sorted(named - defined)
    assert not missing, f"THREAT_MODEL.md names tests that do not exist: {missing}"
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) >= 60
    assert all("test_" in row for row in rows), [r for r in rows if "test_" not in r]
