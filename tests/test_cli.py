"""The ``loganomaly`` command line: parsing and error handling (no Spark needed here)."""

from __future__ import annotations

import argparse

import pytest

from loganomaly.cli import build_parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_no_parser_accepts_abbreviated_options() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) > 5
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [
        (["score", "--model-dir", "m", "--since", "2024-03-05"], "--since"),
        (["ingest", "--input", "x", "--la", "/tmp/l"], "--la"),
        (["sql", "--loc", "SELECT 1"], "--loc"),
    ],
)
def test_an_abbreviated_option_is_an_error_naming_it(argv: list[str], unknown: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and unknown in err


def test_full_option_names_still_parse() -> None:
    args = build_parser().parse_args(["score", "--model-dir", "m", "--since-last-run"])
    assert args.since_last_run and args.date is None
