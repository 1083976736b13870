"""Checks on the codebase itself: what users read must match what the code does."""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    """In README.md's settings table, or in the docs/ page of the feature it belongs to."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in docs)
    missing = [
        f"URBIS_{n.upper()}" for n in Settings.model_fields if f"URBIS_{n.upper()}" not in text
    ]
    assert not missing, f"README.md and docs/ do not document {missing}"


def test_twin_never_imports_api() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "twin").rglob("*.py")
        if "from api" in p.read_text() or "import api" in p.read_text()
    ]
    assert not offenders, offenders


def test_readme_starts_with_the_two_commands() -> None:
    blocks = (ROOT / "README.md").read_text().split("```bash\n")
    assert blocks[1].startswith("pip install -e . && urbis serve --demo")
    test_command = blocks[2].split("\n```")[0]
    assert test_command.endswith("pip install -e '.[test]' && pytest")
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
