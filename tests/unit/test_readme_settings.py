"""The README's table of settings is the schema's, so the documented variables, aliases,
ranges and defaults cannot drift from what the commands and the library read."""

from pathlib import Path

from restoreprof.settings.schema import markdown_table

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_table_is_the_schemas():
    text = README.read_text()
    start = text.index("<!-- settings table: generated -->\n") + len("<!-- settings table: generated -->\n")
    end = text.index("\n<!-- end of settings table -->")
    assert text[start:end] == markdown_table(), (
        "README's settings table differs from the schema: paste "
        "restoreprof.settings.schema.markdown_table() between its markers")
