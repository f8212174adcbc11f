"""Error-level events of a new kind through the product (``features.new_errors``, ``model.new_errors``),
on real Spark, Delta and torch.

Syslog from the project's generator trains the autoencoder (one day, two hosts); the training day
also holds one disk error early on (inside the warm-up). The scored day is another day of the
generator with, on ``host-01`` around noon, three error lines of a program the training never
logged, and on ``host-02`` in the afternoon the training day's disk error again. The new lines
must flag their windows and say so; the known disk error must not count as new, although it is
the first error of its kind in the scoring lake: the model's training templates travel with it.
"""

from __future__ import annotations

import datetime as dt

import pytest

from loganomaly import pipeline
from loganomaly.config import load_config
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.models.window import ModelBundle
from tests.models.test_unseen_pipeline import syslog_days
from tests.test_split_pipeline import CONF, SMALL

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
NOVEL = [dt.datetime(2024, 3, 6, 12, m, tzinfo=UTC) for m in (5, 7, 9)]
KNOWN = dt.datetime(2024, 3, 6, 16, 30, tzinfo=UTC)
DISK = "EXT4-fs error (device sda1): ext4_journal_check_start:83: Detected aborted journal"


def line(ts: dt.datetime, host: str, app: str, text: str) -> str:
    """An RFC 5424 line at severity 3 (err), facility daemon."""
    return f"<27>1 {ts.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {host} {app} 4242 - - {text}\n"


def add_lines(path, extra: list[str]) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_text().splitlines(keepends=True) + extra
    lines.sort(key=lambda text: text.split(" ")[1])
    path.write_text("".join(lines))


@pytest.fixture(scope="module")
def new_errors_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("new-errors")
    train_logs, score_logs = syslog_days(root)
    add_lines(next(p for p in train_logs if p.name == "host-02.log"),
              [line(dt.datetime(2024, 3, 5, 2, 0, tzinfo=UTC), "host-02", "kernel", DISK)])
    add_lines(next(p for p in score_logs if p.name == "host-01.log"),
              [line(ts, "host-01", "reactor", f"coolant loop {i} pressure lost, scram initiated")
               for i, ts in enumerate(NOVEL)])
    add_lines(next(p for p in score_logs if p.name == "host-02.log"), [line(KNOWN, "host-02", "kernel", DISK)])
    cfg = load_config(conf_dir=CONF, overrides=[
        *SMALL, f"lake.root={root / 'lake'}", "train.epochs=12", "train.device=cpu", "model.hidden_size=16",
        "features.new_errors=true", "model.new_errors=true",
    ])
    model_dir = root / "model"
    pipeline.run_split(spark, cfg, model_dir, [str(p) for p in train_logs], [str(p) for p in score_logs])
    rows = Lake(spark, str(root / "lake"), "deltars").read("scores").collect()
    return load_bundle(model_dir), rows


def holds(row, ts: dt.datetime, host: str) -> bool:  # type: ignore[no-untyped-def]
    start, end = (t.replace(tzinfo=UTC) for t in (row.window_start, row.window_end))
    return row.entity == host and start <= ts < end


def test_the_bundle_carries_the_signal_and_the_training_error_templates(new_errors_run) -> None:  # type: ignore[no-untyped-def]
    bundle, _ = new_errors_run
    assert isinstance(bundle, ModelBundle) and bundle.new_errors is not None
    # The disk error is inside the warm-up: no calibration window holds a new error.
    assert bundle.new_errors.threshold == 0.5 and bundle.new_errors.validation_with_new == 0
    assert bundle.new_errors.validation_windows > 20
    assert len(bundle.features["error_templates"]) == 1
    assert "new_errors" in bundle.feature_names


def test_new_error_lines_flag_their_windows_and_a_known_error_does_not_count(new_errors_run) -> None:  # type: ignore[no-untyped-def]
    _, rows = new_errors_run
    novel = [r for r in rows if any(holds(r, ts, "host-01") for ts in NOVEL)]
    assert novel
    for r in novel:
        assert r.is_anomaly and r.score > r.threshold
        assert r.explanation.startswith("new error kinds: "), r.explanation
        assert "error-level event" in r.explanation and "never logged at error level before" in r.explanation
    known = [r for r in rows if holds(r, KNOWN, "host-02")]
    assert known
    assert not any("new error kinds" in r.explanation for r in known)
    others = [r for r in rows if r not in novel]
    assert not any("new error kinds" in r.explanation for r in others)
