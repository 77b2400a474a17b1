"""Regenerate the README's config reference (everything after its marker line) from cluster/config.py.

    .venv/bin/python scripts/update_readme_reference.py
"""

from pathlib import Path

from cluster.config import reference_markdown

MARKER = "Generated from the dataclasses in `cluster/config.py` (`epiq config --reference`); a test keeps it current.\n\n"

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
head, sep, _ = text.partition(MARKER)
if not sep:
    raise SystemExit(f"{readme}: marker line not found")
readme.write_text(head + MARKER + reference_markdown().strip() + "\n")
print(f"updated {readme}")
