"""The project's documentation as the tests read it: the README, and the pages in docs/
that the README links to (reference material moved there from the README)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """The README, then every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def readme_and_docs() -> str:
    """All of their text, one page after another."""
    return "\n".join(page.read_text(encoding="utf-8") for page in pages())
