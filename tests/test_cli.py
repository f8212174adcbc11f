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


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.cli import main

    log_file = tmp_path / "conn.log"
    log_file.write_text("x\n")
    assert main(["sql", "--local", "--lake", str(log_file), "SELECT 1"]) == 2
    assert main(["ingest", "--lake", str(log_file), "--input", str(log_file)]) == 2  # before Spark starts
    (tmp_path / "lake").mkdir()
    assert main(["sql", "--local", "--lake", str(tmp_path / "lake"), "COPY (SELECT 1) TO '/tmp/x.json'"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors[:2] == [f"ConfigError: lake root {log_file} is not a directory (lake.root / --lake must name a folder)"] * 2
    assert errors[2].startswith("QueryError: sql is read-only: COPY is not a read-only statement")
    assert all("\n" not in e for e in errors) and "Traceback" not in capsys.readouterr().err


def test_the_cli_imports_without_delta_rs_torch_or_spark() -> None:
    """The Airflow environment imports the CLI (its DAG checks the commands) with none of these."""
    import subprocess
    import sys

    code = ("import sys\nfor m in ('deltalake', 'torch', 'pyspark'): sys.modules[m] = None\n"
            "import loganomaly.cli\nloganomaly.cli.build_parser()")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_until_and_score_range_parse() -> None:
    from loganomaly.cli import _config

    args = build_parser().parse_args(["train", "--model-dir", "m", "--until", "2024-03-06"])
    assert _config(args).train.train_until == "2024-03-06"
    args = build_parser().parse_args(["train", "--model-dir", "m", "--until", "2024-03-06T12:30:00+00:00"])
    assert _config(args).train.train_until == "2024-03-06T12:30:00+00:00"
    args = build_parser().parse_args(["score", "--model-dir", "m", "--from", "2024-03-05", "--to", "2024-03-07"])
    assert (args.date_from, args.date_to, args.date, args.since_last_run, args.all) == (
        "2024-03-05", "2024-03-07", None, False, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--model-dir", "m", "--from", "2024-03-05", "--date", "2024-03-05"],
        ["score", "--model-dir", "m", "--from", "2024-03-05", "--since-last-run"],
        ["score", "--model-dir", "m", "--from", "2024-03-05", "--all"],
        ["score", "--model-dir", "m", "--fr", "2024-03-05"],
        ["train", "--model-dir", "m", "--unt", "2024-03-05"],
    ],
)
def test_a_range_with_another_date_choice_is_refused(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed with argument" in err or "unrecognized arguments" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model-dir", "m", "--until", "2024-13-01"], "train.train_until='2024-13-01' is not an ISO date"),
        (["train", "--model-dir", "m", "--until", "yesterday"], "train.train_until='yesterday' is not an ISO date"),
        (["score", "--model-dir", "m", "--to", "2024-03-05"], "score --to needs --from"),
    ],
)
def test_bad_until_or_range_exits_2_before_spark(argv: list[str], message: str, caplog) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.cli import main

    assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]
