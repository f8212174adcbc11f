"""How unseen templates act on BGL: the evidence behind ``model.unseen_share`` and its settings.

Run after ``bench/quality.py --datasets bgl`` (it reads that run's lakes and model)::

    .venv/bin/python bench/quality.py --data ../shared/data --datasets bgl --no-supervised --work build/q
    .venv/bin/python bench/unseen_bgl.py --work build/q

Two parts:

* **Validation only** (the choice of settings): the training lake's validation blocks, every
  window of them including the alert ones (the model trained and calibrated on the normal ones
  only, ``train.normal_only``). For each way of treating the unseen-template columns in the
  reconstruction error (kept as trained, left out, or each column's squared error capped at
  ``c**2`` normalised units), the threshold is calibrated on the normal validation windows as
  ``train`` does (screened, at the alert budget) and judged on the labelled validation windows.
  Also: how many normal validation windows hold templates the training part never held, which is
  what the unseen-share threshold is calibrated on.
* **Scored part** (evidence, never a choice): the unseen share of the scored windows by label,
  i.e. how many normal later windows a share rule would flag with the alerts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from deltalake import DeltaTable

from loganomaly import pipeline
from loganomaly.config import load_config
from loganomaly.evaluation.metrics import evaluate
from loganomaly.features.layout import decode_windows
from loganomaly.features.split import Selection, plan_shards, snapshot_split
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import screened_threshold, window_step_errors
from loganomaly.models.bundle import load_bundle
from loganomaly.models.unseen import shares, unseen_columns, unseen_counts
from loganomaly.models.window import ModelBundle
from loganomaly.training.readers.arrow import ShardReader

log = logging.getLogger("bench.unseen_bgl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="the --work of a bench/quality.py --datasets bgl run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(args.work) / "bgl"
    # The training lake's settings as pipeline --train-input used them (every window in the period).
    cfg = pipeline.training_config(load_config(profile="bgl", overrides=[f"lake.root={root / 'lake'}"]))
    training = Path(cfg.lake.root)
    bundle = load_bundle(root / "model")
    assert isinstance(bundle, ModelBundle)
    names = bundle.feature_names
    columns = unseen_columns(names, bundle.normaliser.mean)

    # ---------------------------------------------------------------- validation part
    path = str(training / "sequences")
    snapshot = Snapshot(path, DeltaTable(path).version())
    split = snapshot_split(snapshot, cfg)
    (val_plan,) = plan_shards(snapshot, [Selection(split.train_from, split.train_until, cfg.train.validation_fraction,
                                                   "validation", False)], seed=cfg.train.seed)
    val = ShardReader(val_plan, 0, 1, equal=False).load()
    assert val.abnormal is not None
    labels = (np.asarray(val.abnormal) > 0).astype(np.int64)
    share = shares(*unseen_counts(val.x, names, columns))
    print(f"validation: {len(labels)} windows ({int(labels.sum())} with an alert line); {len(columns)} unseen columns")
    print(f"  normal windows holding an unseen template: {int((share[labels == 0] > 0).sum())} of "
          f"{int((labels == 0).sum())}; at share 1: {int((share[labels == 0] >= 1).sum())}")
    errors = np.rint(np.expm1(val.x[:, :, names.index("errors")]).sum(axis=1))
    novel_errors = (share > 0) & (errors > 0) & (labels == 0)
    print(f"  of those, holding an error-level line too: {int(novel_errors.sum())}")
    per_feature = window_step_errors(bundle.build_model(), bundle.normaliser.transform(val.x)).mean(axis=1)
    unseen_idx = [names.index(c) for c in columns]
    seen_idx = [i for i in range(len(names)) if i not in unseen_idx]
    variants = {"kept (as trained)": per_feature.mean(axis=1), "left out": per_feature[:, seen_idx].mean(axis=1)}
    for cap in (1.0, 3.0, 5.0, 10.0):
        capped = np.concatenate([per_feature[:, seen_idx], np.minimum(per_feature[:, unseen_idx], cap**2)], axis=1)
        variants[f"capped at {cap:g}^2"] = capped.mean(axis=1)
    print("| unseen columns in the error | threshold | ROC-AUC | PR-AUC | FPR | recall | F1 |")
    print("|---|---|---|---|---|---|---|")
    for name, scores in variants.items():
        threshold, _ = screened_threshold(scores[labels == 0], cfg)
        m = evaluate(scores, labels, threshold)
        print(f"| {name} | {threshold:.4g} | {m['roc_auc']:.3f} | {m['pr_auc']:.3f} | {m['fpr']:.3f} | "
              f"{m['recall']:.3f} | {m['f1']:.3f} |")

    # ---------------------------------------------------------------- scored part (evidence only)
    table = DeltaTable(str(root / "lake" / "sequences")).to_pyarrow_table(
        columns=["n_steps", "n_features", "features", "n_abnormal"])
    steps, feats = int(table.column("n_steps")[0].as_py()), int(table.column("n_features")[0].as_py())
    x = decode_windows(table.column("features"), steps, feats)
    scored_labels = np.nan_to_num(table.column("n_abnormal").to_numpy(zero_copy_only=False).astype(float)) > 0
    scored_share = shares(*unseen_counts(x, names, columns))
    print(f"scored: {len(x)} windows ({int(scored_labels.sum())} with an alert line)")
    for cut in (0.0, 0.3, 0.5, 0.99):
        print(f"  share > {cut:g}: normal {int((scored_share[~scored_labels] > cut).sum())} of "
              f"{int((~scored_labels).sum())}, alert {int((scored_share[scored_labels] > cut).sum())} of "
              f"{int(scored_labels.sum())}")


if __name__ == "__main__":
    main()
