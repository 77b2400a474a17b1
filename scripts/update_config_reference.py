"""Regenerate docs/config.md's key tables (everything from its first section heading on) from the config dataclasses.

    .venv/bin/python scripts/update_config_reference.py
"""

from pathlib import Path

from cluster.config import reference_markdown

doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
head, sep, _ = doc.read_text().partition("\n### ")
if not sep:
    raise SystemExit(f"{doc}: no '### ' section heading found")
doc.write_text(head + "\n" + reference_markdown().strip() + "\n")
print(f"updated {doc}")
