"""README stays true: its configuration table is the one the settings model prints."""

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
