"""README stays true: its configuration table is the one the settings model prints, its links lead somewhere."""

import re
from pathlib import Path

from otel_bridge.config import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_configuration_table_matches_the_settings_model():
    text = README.read_text()
    table = text.split("<!-- config-table -->")[1].split("<!-- /config-table -->")[0].strip()
    assert table == settings_table(), "run ./scripts/sync-readme-config"


def test_readme_names_the_test_command_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./scripts/test" in ci
    assert "./scripts/test" in README.read_text()


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of `text` (outside code blocks): lower case, punctuation
    dropped, spaces as hyphens, a repeated one numbered."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            anchor = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchors.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
            seen[anchor] = seen.get(anchor, 0) + 1
    return anchors


def test_every_link_within_the_readme_leads_to_a_heading():
    text = README.read_text()
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) > 30  # the contents and the cross-references
    assert sorted(set(links) - _anchors(text)) == []


def test_the_contents_list_every_section():
    text = README.read_text()
    contents = next(line for line in text.splitlines() if line.startswith("**Contents:**"))
    sections = [line[3:] for line in text.split("\n## Quickstart\n", 1)[1].splitlines() if line.startswith("## ")]
    assert re.findall(r"\[([^]]+)\]\(#", contents) == ["Quickstart", *sections]
