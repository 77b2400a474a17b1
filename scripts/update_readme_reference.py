"""Regenerate docs/config.md's key tables (everything from its first section heading on) from the config dataclasses.

    .venv/bin/python scripts/update_readme_reference.py
"""

from pathlib import Path

from cluster.config import reference_markdown

doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
text = doc.read_text()
head, sep, _ = text.partition("\n### ")
if not sep:
    raise SystemExit(f"{doc}: no '### ' section heading found")
ref = reference_markdown().strip()
doc.write_text(head + "\n" + ref[ref.index("### "):] + "\n")
print(f"updated {doc}")
