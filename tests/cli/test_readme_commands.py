"""The README's command table lists exactly the CLI's top-level commands: every command the
`omnivision` parser knows has a row, and no row names a command the parser does not know."""

from __future__ import annotations

import argparse
import re

from omnivision.cli.main import build_parser

from tests.conftest import REPO


def parser_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def readme_table_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Commands\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Commands' section"
    rows = [line for line in match.group(1).splitlines() if line.startswith("| `omnivision ")]
    assert rows, "the Commands section has no table rows"
    names = []
    for row in rows:
        first_cell = re.split(r"(?<!\\)\|", row)[1]
        row_names = set(re.findall(r"`omnivision ([\w-]+)", first_cell))
        assert len(row_names) == 1, f"a row should describe one command: {first_cell.strip()}"
        names += row_names
    return names


def test_the_parser_has_the_commands():
    assert {"run", "chat", "serve", "train", "eval", "data", "info"} <= parser_commands()


def test_readme_table_lists_exactly_the_cli_commands():
    listed = readme_table_commands()
    assert len(listed) == len(set(listed)), f"commands with more than one row: {sorted(listed)}"
    commands = parser_commands()
    assert set(listed) - commands == set(), "rows for commands the CLI does not have"
    assert commands - set(listed) == set(), "CLI commands without a row in the README's Commands table"
