"""Network indicators through the product (``features.network_indicators``,
``model.network_indicators``, with ``score.entity_baseline``), on real Spark, Delta and torch.

The generator's connection records train the autoencoder (one day, two hosts). On the scored day
``host-01`` turns into a bot calling a dead controller from noon to 14:00: five unanswered TCP
attempts a minute to one address and port, beside its usual traffic. Its windows there must be
flagged by the indicator and say so, all of them: the host has a morning of history by noon, so
the per-entity baseline judges it, and without the indicator's exemption the bot would become its
own normal after a few windows. The model itself does not see the indicator features.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from deltalake import DeltaTable

from loganomaly import pipeline
from loganomaly.config import load_config
from loganomaly.ingest import synthetic
from loganomaly.ingest.synthetic import GenerateConfig
from loganomaly.lake.tables import Lake
from loganomaly.models import window
from loganomaly.models.bundle import load_bundle
from loganomaly.models.window import ModelBundle
from tests.test_split_pipeline import CONF, SMALL

pytestmark = [pytest.mark.spark, pytest.mark.slow]

UTC = dt.timezone.utc
BOT_FROM = dt.datetime(2024, 3, 6, 12, 0, tzinfo=UTC)
BOT_UNTIL = dt.datetime(2024, 3, 6, 14, 0, tzinfo=UTC)


def conn_days(root: Path) -> tuple[list[Path], list[Path]]:
    gen = dict(hosts=2, days=1, anomaly_from_day=5, conn_per_minute=1.5, syslog_per_minute=0.05)
    train = synthetic.generate(root / "train", GenerateConfig(start="2024-03-05", seed=1, **gen))  # type: ignore[arg-type]
    score = synthetic.generate(root / "score", GenerateConfig(start="2024-03-06", seed=2, **gen))  # type: ignore[arg-type]
    return ([p for p in train.files if p.suffix == ".jsonl"], [p for p in score.files if p.suffix == ".jsonl"])


def bot_records() -> list[str]:
    out = []
    t = BOT_FROM.timestamp()
    while t < BOT_UNTIL.timestamp():
        out.append(json.dumps({"ts": round(t, 6), "uid": f"Cbot{int(t)}", "host": "host-01", "id.orig_h": "10.0.0.10",
                               "id.orig_p": 49152 + int(t) % 1000, "id.resp_h": "203.0.113.66", "id.resp_p": 1177,
                               "proto": "tcp", "conn_state": "S0", "duration": 3.0, "orig_bytes": 0, "resp_bytes": 0,
                               "orig_pkts": 2, "resp_pkts": 0}) + "\n")
        t += 12.0
    return out


@pytest.fixture(scope="module")
def bot_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("indicators")
    train_files, score_files = conn_days(root)
    target = score_files[0]
    lines = target.read_text().splitlines(keepends=True) + bot_records()
    lines.sort(key=lambda text: json.loads(text)["ts"])
    target.write_text("".join(lines))
    cfg = load_config(conf_dir=CONF, overrides=[
        *SMALL, f"lake.root={root / 'lake'}", "train.epochs=8", "train.device=cpu", "model.hidden_size=16",
        "features.network_indicators=true", "model.network_indicators=true",
        "score.entity_baseline=true", "score.baseline_groups=[internal,default]",
    ])
    model_dir = root / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(window, "INDICATOR_PIECE_ROWS", 50)  # the training windows read in several pieces
        pipeline.run_split(spark, cfg, model_dir, [str(p) for p in train_files], [str(p) for p in score_files])
    rows = Lake(spark, str(root / "lake"), "deltars").read("scores").collect()
    return load_bundle(model_dir), rows, root


def test_the_bundle_carries_the_signal_and_its_model_does_not_see_the_indicators(bot_run) -> None:  # type: ignore[no-untyped-def]
    bundle, _, root = bot_run
    assert isinstance(bundle, ModelBundle) and bundle.indicators is not None
    names = bundle.feature_names
    assert [names[i] for i in bundle.normaliser.ignored] == ["repeated_failures", "unnamed_requests",
                                                              "malformed_requests", "failed_targets"]
    # left out of the network's input, not zeroed in it: its width is the other features'
    assert bundle.normaliser.dropped and bundle.model_cfg.n_features == len(names) - 4
    assert bundle.state_dict["encoder.weight_ih_l0"].shape[1] == len(names) - 4
    assert len(bundle.metrics["val_feature_error"]) == len(names) - 4
    assert all(t >= 2.5 for t in bundle.indicators.thresholds)
    # Calibrated on every window of the training day (training and validation), not the
    # validation blocks alone.
    training = DeltaTable(str(root / "lake" / "_training" / "sequences")).to_pyarrow_table(columns=["n_abnormal"])
    assert training.num_rows > 50 and bundle.indicators.validation_windows == training.num_rows


def test_every_window_of_the_bot_stays_flagged_and_says_why(bot_run) -> None:  # type: ignore[no-untyped-def]
    _, rows, _ = bot_run

    def overlaps(r) -> bool:  # type: ignore[no-untyped-def]
        start, end = (t.replace(tzinfo=UTC) for t in (r.window_start, r.window_end))
        return start < BOT_UNTIL and end > BOT_FROM

    bot = [r for r in rows if r.entity == "host-01" and overlaps(r)]
    assert len(bot) >= 8
    assert all(r.is_anomaly for r in bot)
    assert all(r.top_features[0] == "repeated_failures" for r in bot)
    assert all(r.explanation.startswith("network indicators: ") for r in bot)
    # the host had its morning as history: the baseline judged these windows and let them stand
    assert any("which its own baseline does not excuse" in r.explanation for r in bot)
    others = [r for r in rows if not (r.entity == "host-01" and overlaps(r))]
    assert others and not any((r.explanation or "").startswith("network indicators: ") for r in others)
