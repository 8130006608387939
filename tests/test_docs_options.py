"""Every ``--option`` the docs name exists: in the ``--help`` of the dlmi command it is written with, and a
bare ``--option`` in backticks in the ``--help`` of some dlmi command (issue 18)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlmi.cli.main import make_app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
# Options of the other programs the docs show next to dlmi (torchrun, pip, pytest).
OTHER_PROGRAMS = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id",
                  "--rdzv-backend", "--master-addr", "--master-port", "--standalone", "--extra-index-url",
                  "--index-url", "--durations", "--editable", "--upgrade"}
# Commands that docs/plugins.md writes as a plugin's example (not built in).
PLUGIN_EXAMPLES = {"hello"}
# A dlmi call: at the start of a line or span, after a prompt, `-m` (python, torchrun) or `&&`.
CALL = re.compile(r"(?:^|\$ |-m |&& )dlmi (?=[a-z])")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _commands(group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    found = {path: group}
    for name, sub in getattr(group, "commands", {}).items():
        found.update(_commands(sub, (*path, name)))
    return found


COMMANDS = _commands(typer.main.get_command(make_app()))


@cache
def help_options(path: tuple[str, ...]) -> frozenset[str]:
    """The ``--options`` that ``dlmi PATH --help`` lists (read from its text, as a user would)."""
    result = CliRunner().invoke(make_app(), [*path, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return frozenset(OPTION.findall(result.output))


def command_path(words: list[str]) -> tuple[str, ...]:
    """The longest dlmi sub-command named by the words that follow ``dlmi``."""
    path: tuple[str, ...] = ()
    for word in words:
        if (*path, word) not in COMMANDS:
            break
        path = (*path, word)
    return path


def snippets(text: str) -> list[str]:
    """Code-block lines (continuations joined) and inline code spans of a Markdown page."""
    found: list[str] = []
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    for block in blocks:
        found += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    found += re.findall(r"`([^`\n]+)`", prose)
    return found


def documented_options() -> list[tuple[str, tuple[str, ...] | None, str]]:
    """(page, command path or None for a bare option, option) for every option the docs name."""
    named = []
    for page in DOCS:
        for snippet in snippets(page.read_text(encoding="utf-8")):
            for part in CALL.split(snippet.strip())[1:]:  # each `dlmi …` call in the snippet
                words = part.split()
                if words[0] in PLUGIN_EXAMPLES:
                    continue
                path = command_path(words)
                assert path, f"{page.name}: `dlmi {words[0]}` is not a dlmi command"
                named += [(page.name, path, option) for option in OPTION.findall(part)]
            if snippet.startswith("--"):  # a bare option in backticks
                named += [(page.name, None, option) for option in OPTION.findall(snippet)[:1]]
    return sorted(set(named), key=str)


def test_the_docs_name_options_at_all() -> None:
    named = documented_options()
    assert len(named) > 100
    assert ("README.md", ("train", "joint"), "--folds") in named
    assert ("training.md", None, "--augment-recipe") in named


@pytest.mark.parametrize("page,path,option", documented_options(), ids=str)
def test_documented_option_exists(page: str, path: tuple[str, ...] | None, option: str) -> None:
    if option in OTHER_PROGRAMS or option == "--help":
        return
    if path is None:
        everywhere = frozenset().union(*(help_options(p) for p in COMMANDS))
        assert option in everywhere, f"{page}: `{option}` is not an option of any dlmi command"
    else:  # a group (`dlmi train … --out`): some command of the group
        commands = [p for p in COMMANDS if p[:len(path)] == path and not hasattr(COMMANDS[p], "commands")]
        assert any(option in help_options(p) for p in commands), \
            f"{page}: `dlmi {' '.join(path)}` has no {option}"
