"""Issue 17 item 5: every flag of every command has help text that shows its default; --version."""

from __future__ import annotations

import argparse

import pytest

from hf_introspect import __version__
from hf_introspect.cli import COMMANDS, HelpFormatter, build_parser, main


def subparsers():
    parser = build_parser()
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return group.choices


def test_every_command_is_registered():
    assert sorted(subparsers()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_with_its_default(command):
    parser = subparsers()[command]
    formatter = HelpFormatter(prog=command)
    missing, no_default = [], []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        if not (action.help or "").strip():
            missing.append(flag)
        elif "default" not in formatter._get_help_string(action).lower():
            no_default.append(flag)
    assert missing == [], f"{command}: options without help text"
    assert no_default == [], f"{command}: options whose help does not show the default"
    assert "(default:" in parser.format_help() or "default" in parser.format_help()


def test_defaults_are_shown_in_the_help_text(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: the strings below are not wrapped
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "(default: none)" in out and "show full tracebacks and the libraries' warnings (default: off)" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"hf-introspect {__version__}"
