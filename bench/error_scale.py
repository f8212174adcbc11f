"""Plain against standardised reconstruction errors (``model.error_scale``) on a trained model's windows.

Run after ``bench/quality.py`` (it reads that run's lakes and model)::

    .venv/bin/python bench/quality.py --data ../shared/data --datasets zeek_loco --no-supervised \\
        --set train.epochs=12 --work build/loco
    .venv/bin/python bench/error_scale.py --profile zeek --fold build/loco/zeek_loco/holdout-008

For the model of one run (its network; the scoring rule is what differs), the per-feature
reconstruction errors of the training lake's validation windows (every one, labelled anomalies
included: what a choice may use) and of the scored lake's windows are computed once, and each
scoring rule is judged on both: ROC-AUC on the validation windows, ROC-AUC and PR-AUC on the scored
ones, and the FPR and recall of the scored windows at the threshold the rule gets from the normal
validation windows (screened, at the alert budget, as ``train`` calibrates). The rules: the plain
mean (``none``), each feature over its typical error on the normal validation windows
(``typical``, as ``train`` computes it: over the normal validation windows the plain score's
screening keeps), and the same with the typical errors floored at fixed
values, to show how much the result rests on the features reconstructed most closely.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from deltalake import DeltaTable
from sklearn.metrics import average_precision_score, roc_auc_score

from loganomaly import pipeline
from loganomaly.config import load_config
from loganomaly.features.layout import decode_windows
from loganomaly.features.split import Selection, plan_shards, snapshot_split
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import error_weights, screened_threshold, window_errors
from loganomaly.models.bundle import load_bundle
from loganomaly.models.window import ModelBundle
from loganomaly.training.readers.arrow import ShardReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="the profile the quality run used (zeek, bgl, nslkdd)")
    parser.add_argument("--fold", required=True, help="a quality run's data-set folder holding lake/ and model/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="the run's own overrides (e.g. model.hidden_size=64), to rebuild its split")
    args = parser.parse_args()
    root = Path(args.fold)
    cfg = pipeline.training_config(load_config(profile=args.profile, overrides=[f"lake.root={root / 'lake'}",
                                                                               *args.overrides]))
    bundle = load_bundle(root / "model")
    assert isinstance(bundle, ModelBundle)
    model = bundle.build_model()

    path = str(Path(cfg.lake.root) / "sequences")
    snapshot = Snapshot(path, DeltaTable(path).version())
    split = snapshot_split(snapshot, cfg)
    (plan,) = plan_shards(snapshot, [Selection(split.train_from, split.train_until, cfg.train.validation_fraction,
                                               "validation", False)], seed=cfg.train.seed)
    val = ShardReader(plan, 0, 1, equal=False).load()
    val_labels = (np.asarray(val.abnormal) > 0) if val.abnormal is not None else np.zeros(len(val.x), bool)
    table = DeltaTable(str(root / "lake" / "sequences")).to_pyarrow_table(
        columns=["n_steps", "n_features", "features", "n_abnormal"])
    x = decode_windows(table.column("features"), int(table.column("n_steps")[0].as_py()),
                       int(table.column("n_features")[0].as_py()))
    labels = np.nan_to_num(table.column("n_abnormal").to_numpy(zero_copy_only=False).astype(float)) > 0

    _, val_errors = window_errors(model, bundle.normaliser.transform(val.x))
    _, errors = window_errors(model, bundle.normaliser.transform(x))
    # As train computes it: the normal validation windows the plain score's screening keeps.
    normal = val_errors[~val_labels]
    _, screening = screened_threshold(normal.mean(axis=1), cfg)
    typical = normal[screening["keep"]].mean(axis=0)
    rules: dict[str, np.ndarray] = {"none": np.ones(len(typical)), "typical": error_weights(typical)}
    for floor in (1e-4, 1e-3, 1e-2):
        rules[f"typical, floor {floor:g}"] = 1.0 / np.maximum(typical, floor)

    print(f"validation windows {len(val_labels)} ({int(val_labels.sum())} anomalous); "
          f"scored {len(labels)} ({int(labels.sum())} anomalous)")
    print("| error_scale | validation ROC-AUC | scored ROC-AUC | scored PR-AUC | threshold | FPR | recall |")
    print("|---|---|---|---|---|---|---|")
    for name, weights in rules.items():
        val_scores = (val_errors * weights).mean(axis=1)
        scores = (errors * weights).mean(axis=1)
        threshold, _ = screened_threshold(val_scores[~val_labels], cfg)
        flagged = scores > threshold
        val_auc = roc_auc_score(val_labels, val_scores) if 0 < val_labels.sum() < len(val_labels) else float("nan")
        fpr = float(flagged[~labels].mean()) if (~labels).any() else float("nan")
        print(f"| {name} | {val_auc:.3f} | {roc_auc_score(labels, scores):.3f} | "
              f"{average_precision_score(labels, scores):.3f} | {threshold:.4g} | {fpr:.3f} | "
              f"{float(flagged[labels].mean()):.3f} |")


if __name__ == "__main__":
    main()
