"""The unseen-template share through the product (``model.unseen_share``), on real Spark, Delta and torch.

Syslog from the project's generator trains the autoencoder (one day, two hosts). The scored day
is another day of the same generator, with an hour on ``host-01`` that is mostly messages no
training template fits. The share signal must flag the windows of that hour and say so in user
terms, and flag no window of ordinary traffic.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from loganomaly import pipeline
from loganomaly.config import GenerateConfig, load_config
from loganomaly.ingest import synthetic
from loganomaly.lake.tables import Lake
from loganomaly.models.autoencoder import KIND
from loganomaly.models.bundle import load_bundle
from loganomaly.models.window import ModelBundle
from tests.test_split_pipeline import CONF, SMALL

pytestmark = pytest.mark.spark

#: The scored day and the hour of unseen messages on host-01.
SCORED_DAY = "2024-03-06"
BURST = (dt.datetime(2024, 3, 6, 12, 0, tzinfo=dt.timezone.utc), dt.datetime(2024, 3, 6, 13, 0, tzinfo=dt.timezone.utc))


def novel_lines(n: int) -> list[str]:
    """``n`` syslog lines of a program and wording the generator never writes, spread over the burst hour."""
    start = BURST[0].timestamp()
    words = ["quasar", "flux", "capacitor", "desynchronised", "chronal", "anchor", "beta", "warp", "coil", "drift"]
    out = []
    for i in range(n):
        ts = dt.datetime.fromtimestamp(start + i * 3600 / n, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # Rotating word order and length: not one new template but many, none of the training ones.
        text = " ".join(words[(i + k) % len(words)] for k in range(3 + i % 5))
        out.append(f"<26>1 {ts} host-01 reactor 4242 - - {text}\n")
    return out


def syslog_days(root: Path) -> tuple[list[Path], list[Path]]:
    """The generator's syslog files (two hosts) of a training day (2024-03-05) and of :data:`SCORED_DAY`."""
    gen = dict(hosts=2, days=1, anomaly_from_day=5, conn_per_minute=0.1, syslog_per_minute=0.6)
    train = synthetic.generate(root / "train", GenerateConfig(start="2024-03-05", seed=1, **gen))  # type: ignore[arg-type]
    score = synthetic.generate(root / "score", GenerateConfig(start=SCORED_DAY, seed=2, **gen))  # type: ignore[arg-type]
    return [p for p in train.files if p.suffix == ".log"], [p for p in score.files if p.suffix == ".log"]


@pytest.fixture(scope="module")
def unseen_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("unseen")
    train_files, score_logs = syslog_days(root)
    train_logs = [str(p) for p in train_files]
    target = next(p for p in score_logs if p.name == "host-01.log")
    lines = target.read_text().splitlines(keepends=True) + novel_lines(40)
    lines.sort(key=lambda line: line.split(" ")[1])
    target.write_text("".join(lines))
    cfg = load_config(conf_dir=CONF, overrides=[
        *SMALL, f"lake.root={root / 'lake'}", "train.epochs=12", "train.device=cpu", "model.hidden_size=16",
        "model.unseen_share=true",
    ])
    model_dir = root / "model"
    pipeline.run_split(spark, cfg, model_dir, train_logs, [str(p) for p in score_logs])
    rows = Lake(spark, str(root / "lake"), "deltars").read("scores").collect()
    return load_bundle(model_dir), rows


def in_burst(row) -> bool:  # type: ignore[no-untyped-def]
    """Whether the window overlaps most of the burst hour (it holds over half its lines)."""
    start, end = (t.replace(tzinfo=dt.timezone.utc) for t in (row.window_start, row.window_end))
    overlap = (min(end, BURST[1]) - max(start, BURST[0])).total_seconds()
    return row.entity == "host-01" and overlap >= 1800


def test_the_bundle_carries_the_calibrated_share(unseen_run) -> None:  # type: ignore[no-untyped-def]
    bundle, _ = unseen_run
    assert isinstance(bundle, ModelBundle) and bundle.unseen is not None
    assert "tpl:unknown" in bundle.unseen.columns
    # Training traffic holds every generator template, so the floor decides the threshold.
    assert bundle.unseen.threshold >= 0.1 and bundle.unseen.can_alert
    assert bundle.metrics["unseen_share"]["threshold"] == bundle.unseen.threshold
    assert KIND.summary(bundle)["unseen_share_threshold"] == bundle.unseen.threshold
    assert dict(KIND.report_facts(bundle))["unseen-template share threshold"].startswith(
        f"{bundle.unseen.threshold:.3g} (calibrated ")


def test_an_hour_of_unseen_messages_is_flagged_by_the_share_and_ordinary_windows_are_not(unseen_run) -> None:  # type: ignore[no-untyped-def]
    bundle, rows = unseen_run
    burst = [r for r in rows if in_burst(r)]
    ordinary = [r for r in rows if r.window_end.replace(tzinfo=dt.timezone.utc) <= BURST[0]
                or r.window_start.replace(tzinfo=dt.timezone.utc) >= BURST[1] or r.entity != "host-01"]
    assert burst and len(ordinary) > 100
    for r in burst:
        assert r.is_anomaly and r.score > r.threshold
        assert "events match no template the model knows (share" in r.explanation
        assert "> calibrated" in r.explanation and r.explanation.startswith("unseen-template share: ")
    # No ordinary window holds an unseen event: the share flags none of them, and their scores
    # are the reconstruction error alone.
    assert not any("match no template" in r.explanation for r in ordinary)
    flagged = [r for r in ordinary if r.is_anomaly]
    assert all(r.explanation.startswith("reconstruction error ") for r in flagged)
    assert len(flagged) <= 0.1 * len(ordinary)
