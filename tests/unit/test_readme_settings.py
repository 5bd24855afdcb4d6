"""The README's Configuration table is `pipeline.config.Settings`, so the two cannot drift apart.

Every setting has a row naming its environment variable with its real default, and no row names
a variable Settings does not read. A row may hold several variables (`A` / `B`) with their
defaults in the same order (`1 / 2`). A default of None (or an empty list) is written `—`, with
what happens instead in parentheses: `— (embedded Postgres …)`. Backticks and thousands
separators are formatting: `routes.toml` and 20,000 match routes.toml and 20000.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from pipeline.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def configuration_rows() -> dict[str, str]:
    """Variable name -> its default cell, from the table under "## Configuration"."""
    section = README.read_text().split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not NAME.search(cells[0]):
            continue
        names = NAME.findall(cells[0])
        defaults = [cells[1]] if len(names) == 1 else [d.strip() for d in cells[1].split(" / ")]
        assert len(defaults) == len(names), f"one default per variable: {line}"
        for name, default in zip(names, defaults, strict=True):
            assert name not in rows, f"{name} has two rows"
            rows[name] = default
    return rows


def plain(cell: str) -> str:
    """A default cell without formatting: no backticks, no thousands separators."""
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", cell.replace("`", ""))


def written(info: FieldInfo) -> str:
    """How the table writes a field's default."""
    default: Any = info.get_default(call_default_factory=True)
    if default is None or default == []:
        return "—"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"  # 60.0 -> 60, 0.5 -> 0.5
    return str(default)


def test_every_setting_has_a_row_with_its_real_default() -> None:
    rows = configuration_rows()
    for field, info in Settings.model_fields.items():
        name = field.upper()
        assert name in rows, f"README Configuration table has no row for {name}"
        expected = written(info)
        cell = plain(rows[name])
        assert cell == expected or cell.startswith(expected + " ("), (
            f"{name}: README says {cell!r}, Settings default is {expected!r}"
        )


def test_no_row_for_a_setting_that_does_not_exist() -> None:
    fields = {field.upper() for field in Settings.model_fields}
    unknown = set(configuration_rows()) - fields
    assert not unknown, f"README documents settings Settings does not read: {sorted(unknown)}"
