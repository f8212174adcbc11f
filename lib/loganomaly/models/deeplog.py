"""DeepLog as a model kind: ``sessions`` -> next-event LSTM -> one ``scores`` row per session.

Training. The ``sessions`` version is pinned first and its training period is collected on the
driver: DeepLog's vocabulary is fitted there, and a session is a short list of template ids, so even
millions of sessions fit. The encoded sessions then go to every rank of ``train.backend`` as
:class:`~loganomaly.models.nextevent.SessionRows` (one int64 per event), each rank training on its
seeded shard of the events on the shared loop. The split is chronological on the session start,
with the rule of :func:`loganomaly.features.split.chronological_split` (a session belongs to the
training period when it *ends* before the cut), and validation is the same evenly spread time
blocks the window kinds hold out, so ``top_g`` is calibrated on the whole daily cycle. DeepLog
learns normal behaviour only: sessions with a non-null ``label`` are left out of training and
validation. The vocabulary is fitted on the training sessions alone, so a template first seen
later is *unknown* and always unexpected. ``top_g`` is ``model.top_g`` when set, else the smallest
g whose false-positive rate on the validation normal sessions is at most ``model.target_fpr``.

Scoring. Each session becomes one ``scores`` row:

* ``entity`` = ``session_key``, ``window_start``/``window_end`` = session ``start``/``end``;
* ``score`` = the number of unexpected events (events outside the top-g next-template candidates,
  or of a template unseen in training), ``threshold`` = 0.0, and ``is_anomaly`` = ``score >
  threshold``, which is exactly the DeepLog rule "any unexpected event". A count rather than the
  max NLL keeps ``score > threshold`` and ``is_anomaly`` the same statement, and an unseen
  template raises it by one per occurrence; the max NLL is in the explanation;
* ``explanation`` lists the unexpected events (0-based position in the session, template id, and
  either ``unknown template`` or its rank with the templates the model expected there);
* ``top_features`` = the unexpected template ids, distinct, in session order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from loganomaly.config import Config, TrainConfig
from loganomaly.errors import ConfigError, ModelError, StageInputError
from loganomaly.features.split import chronological_split, order_validation_mask, validation_block_mask
from loganomaly.ingest.templates.miner import Templates
from loganomaly.ingest.templates.store import current_version
from loganomaly.models.bundle import build_network, load_bundle, templates_of, training_templates
from loganomaly.models.kind import (
    Bundle,
    Inference,
    ModelKind,
    RankWork,
    ScoringInput,
    TrainingPlan,
    quantiles,
)
from loganomaly.models.nextevent import (
    DeepLog,
    DeepLogConfig,
    NextEventTask,
    SessionRows,
    SessionScore,
    calibrate_nll_threshold,
    calibrate_top_g,
    score_sessions,
)
from loganomaly.models.task import FitTask, TrainResult
from loganomaly.models.vocabulary import END_TOKEN, Vocabulary, with_end
from loganomaly.runtime.collective import Collective, epoch_seed, shard_indices
from loganomaly.runtime.device import pick_device

if TYPE_CHECKING:
    from loganomaly.lake.tables import Lake

log = logging.getLogger(__name__)

__all__ = ["KIND", "DeepLogBundle", "DeepLogKind", "DeepLogWork", "explain_sessions", "score_template_sessions"]

#: Fewest normal sessions in the training and validation parts.
MIN_TRAIN_SESSIONS = 8
MIN_VALIDATION_SESSIONS = 2
#: Unexpected events named in one explanation; the rest are counted.
EXPLAIN_MAX_EVENTS = 10
#: Expected templates shown per unexpected event.
EXPLAIN_EXPECTED = 3
#: ``scores.threshold`` of DeepLog rows: ``score`` (unexpected events) above it is the DeepLog rule.
SCORE_THRESHOLD = 0.0


@dataclass
class DeepLogBundle:
    """A trained DeepLog model and everything needed to score sessions with it (kind ``deeplog``).

    Attributes:
        model_cfg: architecture; its ``top_g`` is the scoring rule (an event outside the ``top_g``
            most likely next templates, or of an unknown template, is unexpected).
        state_dict: its weights.
        vocabulary: template id strings -> model ids, fitted on the training sessions only.
        nll_threshold: the validation quantile of the per-session max NLL; an alternative,
            continuous rule kept for ranking and reports (the top-g rule decides ``is_anomaly``).
        metrics: validation metrics (loss, false-positive rate at ``top_g``, NLL quantiles).
        training: provenance (``sessions`` version, split, run id, history, config).
        version: content hash, set by :func:`save_bundle` and checked at load.
        templates: the template-miner state (``Templates.to_dict()``) or None.
    """

    model_cfg: DeepLogConfig
    state_dict: dict[str, torch.Tensor]
    vocabulary: Vocabulary
    nll_threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    templates: dict[str, Any] | None = None

    kind: ClassVar[str] = "deeplog"

    @property
    def threshold(self) -> float:
        """``scores.threshold`` of DeepLog rows: a score (unexpected events) above it is the DeepLog rule."""
        return SCORE_THRESHOLD

    @property
    def top_g(self) -> int:
        """Candidates that count as expected (stored in the model config)."""
        return self.model_cfg.top_g

    def build_model(self, device: torch.device | None = None) -> DeepLog:
        """The model with its weights, in eval mode, on ``device`` (CPU by default)."""
        model = build_network(self.model_cfg, self.state_dict, device)
        assert isinstance(model, DeepLog)
        return model

    def template_state(self) -> Templates | None:
        """The template miner the training sessions were mined with, or None."""
        return templates_of(self.templates)


@dataclass
class DeepLogWork(RankWork):
    """DeepLog's data for the ranks: the encoded sessions themselves (every rank takes its shard).

    Attributes:
        rows: training events.
        val_rows: validation events (each rank validates every ``world``-th).
        model_cfg: model shape (its vocabulary size).
    """

    rows: SessionRows
    val_rows: SessionRows
    model_cfg: DeepLogConfig

    def check_world(self, world: int, settings: TrainConfig) -> None:
        if settings.reader != "arrow":
            raise ConfigError("train.reader applies to the window kinds' snapshots; DeepLog ships its sessions "
                              "to the ranks itself, so leave train.reader=arrow")
        if len(self.rows) < world:
            raise ModelError(f"{len(self.rows)} training events cannot give each of {world} ranks one")

    def build_task(self, settings: TrainConfig, comm: Collective) -> tuple[FitTask, dict[str, Any]]:
        """This rank's shard of the events (equal counts on every rank) and its share of validation.

        Raises:
            ModelError: no training or validation events, or fewer training events than ranks.
        """
        rows, val_rows = self.rows, self.val_rows
        if len(rows) < comm.world or len(val_rows) == 0:
            raise ModelError(f"DeepLog needs training and validation events (at least one training event per "
                             f"rank), got {len(rows)} and {len(val_rows)} on {comm.world} rank(s)")
        if comm.rank == 0:
            log.info("DeepLog: %d training and %d validation events on %d rank(s)", len(rows), len(val_rows),
                     comm.world)
        n, rank, world, seed = len(rows), comm.rank, comm.world, settings.seed

        def order(epoch: int) -> np.ndarray:
            return shard_indices(n, rank, world, epoch_seed(seed, epoch))

        share = val_rows.take(np.arange(rank, len(val_rows), world))
        return NextEventTask(rows, share, self.model_cfg, order), {}


def _load_sessions(lake: Lake, version: int) -> pd.DataFrame:
    """The sessions of one table version, ordered by start (driver memory: keys and template ids only)."""
    df = lake.read("sessions", version=version).select("session_key", "start", "end", "label", "template_ids")
    table = df.toArrow()
    if table.num_rows == 0:
        raise StageInputError("sessions is empty")
    frame = pd.DataFrame({
        "session_key": table.column("session_key").to_pylist(),
        "start": table.column("start").cast("int64").to_numpy() / 1e6,
        "end": table.column("end").cast("int64").to_numpy() / 1e6,
        "label": table.column("label").to_pylist(),
        "template_ids": [list(v or []) for v in table.column("template_ids").to_pylist()],
    })
    return frame.sort_values(["start", "session_key"], kind="stable").reset_index(drop=True)


def _fpr(scores: Sequence[SessionScore], g: int) -> float:
    flagged = [s.n_unknown > 0 or s.max_rank >= g for s in scores]
    return float(np.mean(flagged)) if flagged else 0.0


def _templates_version(state: dict[str, Any]) -> str:
    return Templates.from_dict(state).version


def explain_sessions(
    bundle: DeepLogBundle, sessions: Sequence[Sequence[str]], scores: Sequence[SessionScore]
) -> pd.DataFrame:
    """``score``, ``top_features`` and ``explanation`` of scored sessions (Spark-free).

    Template ids are taken from the session itself, not decoded from model ids, so an unknown
    template is named as it appears in the data (``T0 (unknown template)``).
    """
    out_scores, tops, texts = [], [], []
    for session, s in zip(sessions, scores, strict=True):
        out_scores.append(float(s.n_misses))
        seen: dict[str, None] = {}
        parts: list[str] = []
        for ev in s.unexpected:
            template = str(session[ev.position])
            seen.setdefault(template, None)
            if len(parts) >= EXPLAIN_MAX_EVENTS:
                continue
            if ev.rank is None:
                parts.append(f"pos {ev.position}: {template} (unknown template)")
            else:
                expected = ", ".join(bundle.vocabulary.decode(ev.expected[:EXPLAIN_EXPECTED]))
                parts.append(f"pos {ev.position}: {template} (rank {ev.rank + 1} > top_g {bundle.top_g}; "
                             f"expected {expected})")
        tops.append(list(seen))
        if not s.unexpected:
            texts.append("")
            continue
        more = s.n_misses - len(parts)
        head = (f"{s.n_misses} of {s.n_events} events unexpected"
                + (f" ({s.n_unknown} with unknown templates)" if s.n_unknown else "")
                + f", max NLL {s.max_nll:.2f}: ")
        texts.append(head + "; ".join(parts) + (f"; and {more} more" if more > 0 else ""))
    return pd.DataFrame({"score": np.asarray(out_scores, dtype=np.float64), "top_features": tops,
                         "explanation": texts})


def score_template_sessions(
    bundle: DeepLogBundle, model: DeepLog, device: torch.device, sessions: Sequence[Sequence[str]],
    inference: Inference | None = None,
) -> pd.DataFrame:
    """Score sessions of template id strings with DeepLog: the UDF body, Spark-free.

    A model trained with session ends (its vocabulary holds :data:`END_TOKEN`) scores them too.
    """
    if END_TOKEN in bundle.vocabulary.templates:
        sessions = with_end(sessions)
    encoded = [bundle.vocabulary.encode(s) for s in sessions]
    inference = inference or Inference()
    scores = score_sessions(model, encoded, top_g=bundle.top_g, batch_size=inference.batch_size, device=device,
                            bf16=inference.bf16)
    return explain_sessions(bundle, sessions, scores)


class DeepLogKind(ModelKind):
    """``model.kind=deeplog``: next-event prediction over the template-id sessions of ``sessions``."""

    name = "deeplog"
    bundle_kind = DeepLogBundle.kind
    input_table = "sessions"
    unit = "sessions"

    def plan(self, spark: Any, cfg: Config, lake: Lake, model_dir: Path) -> TrainingPlan:
        """Collect the training period's normal sessions, fit the vocabulary, lay the sessions out for the ranks.

        Raises:
            StageInputError: no (or an empty) ``sessions`` table, or too few normal sessions in the
                training or validation part.
            ConfigError: ``train.init_from`` holds another kind or shape.
        """
        version = lake.version("sessions")
        if version is None:
            raise StageInputError(
                f"no sessions table under {lake.root}; run `loganomaly featurize` with features.session_key set"
            )
        sessions = _load_sessions(lake, version)
        starts, ends = sessions["start"].to_numpy(), sessions["end"].to_numpy()
        split = chronological_split(starts, ends, cfg)
        in_period = (ends <= split.train_until) & (starts >= split.train_from)
        normal = sessions["label"].isna().to_numpy()
        excluded = int((in_period & ~normal).sum())
        is_val = validation_block_mask(starts, split.train_from, split.train_until, cfg.train.validation_fraction)
        if int((in_period & normal & is_val).sum()) < MIN_VALIDATION_SESSIONS:
            # Sessions that all start in a burst (HDFS jobs allocate their blocks within minutes) fall
            # into one or two time blocks; spread validation over the sessions' start order instead.
            is_val = order_validation_mask(starts, in_period & normal, cfg.train.validation_fraction)
            log.info("train: sessions start too close together for time-block validation; every %d-th "
                     "session in start order validates instead", round(1 / cfg.train.validation_fraction))
        train_rows = sessions[in_period & normal & ~is_val]
        val_rows = sessions[in_period & normal & is_val]
        if len(train_rows) < MIN_TRAIN_SESSIONS or len(val_rows) < MIN_VALIDATION_SESSIONS:
            raise StageInputError(
                f"too few normal sessions to train DeepLog: {len(train_rows)} training, {len(val_rows)} validation "
                f"(need >= {MIN_TRAIN_SESSIONS} and >= {MIN_VALIDATION_SESSIONS}); widen the data or change "
                "train.train_until"
            )
        train_sessions, val_sessions = list(train_rows["template_ids"]), list(val_rows["template_ids"])
        if cfg.model.session_end:
            train_sessions, val_sessions = with_end(train_sessions), with_end(val_sessions)
        base = load_bundle(cfg.train.init_from) if cfg.train.init_from else None
        if base is not None and not isinstance(base, DeepLogBundle):
            raise ConfigError(f"train.init_from={cfg.train.init_from} holds a {base.kind} bundle, not a deeplog one")
        # Continuing a model keeps its vocabulary: its output layer is indexed by it. Templates first
        # seen in the new data stay unknown (always unexpected) until a model is trained afresh.
        vocab = base.vocabulary if base is not None else \
            Vocabulary.fit(train_sessions, min_support=cfg.model.min_template_support)
        train_ids = vocab.encode_many(train_sessions)
        val_ids = vocab.encode_many(val_sessions)
        model_cfg = DeepLogConfig(
            vocab_size=vocab.size,
            window=cfg.model.history,
            embedding_dim=cfg.model.embedding_dim,
            hidden_size=cfg.model.hidden_size,
            num_layers=cfg.model.num_layers,
            # Placeholder until calibrated below; top_g plays no part in training.
            top_g=cfg.model.top_g if cfg.model.top_g > 0 else 1,
            dropout=cfg.model.dropout,
        )
        if base is not None and dataclasses.replace(base.model_cfg, top_g=model_cfg.top_g) != model_cfg:
            raise ConfigError(f"train.init_from={cfg.train.init_from} holds DeepLog {base.model_cfg.to_dict()}; "
                              f"this run's model config is {model_cfg.to_dict()}")
        work = DeepLogWork(
            SessionRows.build(train_ids, model_cfg.window, model_cfg.vocab_size, "training"),
            SessionRows.build(val_ids, model_cfg.window, model_cfg.vocab_size, "validation"),
            model_cfg,
        )
        return TrainingPlan(
            work=work,
            init_state=None if base is None else base.state_dict,
            describe=f"{len(train_rows)} training and {len(val_rows)} validation normal sessions from sessions "
                     f"version {version} (split {split.as_dict()}; {excluded} labelled sessions of the period left out)",
            context={"version": version, "split": split, "vocab": vocab, "val_ids": val_ids, "model_cfg": model_cfg,
                     "train_sessions": len(train_rows), "validation_sessions": len(val_rows), "excluded": excluded},
        )

    def finish(self, plan: TrainingPlan, result: TrainResult, cfg: Config, lake: Lake, run_id: str) -> DeepLogBundle:
        """Calibrate ``top_g`` (and the NLL threshold) on the validation normal sessions."""
        ctx = plan.context
        version, split, vocab, val_ids = ctx["version"], ctx["split"], ctx["vocab"], ctx["val_ids"]
        model_cfg: DeepLogConfig = ctx["model_cfg"]
        model = DeepLog(model_cfg)
        model.load_state_dict(result.state_dict)
        model.to(pick_device(cfg.train.device)).eval()
        val_scores = score_sessions(model, val_ids, top_g=1)
        if cfg.model.top_g > 0:
            top_g = cfg.model.top_g
        else:
            top_g = calibrate_top_g(val_scores, cfg.model.target_fpr, max_g=model_cfg.n_templates)
        model_cfg = dataclasses.replace(model_cfg, top_g=top_g)
        nll_threshold = calibrate_nll_threshold(val_scores, cfg.train.threshold_quantile)
        val_fpr = _fpr(val_scores, top_g)
        templates = training_templates(cfg, lake)
        nll = np.array([s.max_nll for s in val_scores])
        bundle = DeepLogBundle(
            model_cfg=model_cfg,
            state_dict=result.state_dict,
            vocabulary=vocab,
            nll_threshold=nll_threshold,
            metrics={
                "best_val_loss": result.best_val_loss,
                "best_epoch": result.best_epoch,
                "validation_fpr": val_fpr,
                "target_fpr": cfg.model.target_fpr,
                "top_g_calibrated": cfg.model.top_g <= 0,
                "val_unknown_sessions": int(sum(s.n_unknown > 0 for s in val_scores)),
                "val_max_nll_quantiles": quantiles(nll),
            },
            training={
                "run_id": run_id,
                "sessions_version": version,
                "split": split.as_dict(),
                "train_sessions": ctx["train_sessions"],
                "validation_sessions": ctx["validation_sessions"],
                "excluded_labelled_sessions": ctx["excluded"],
                "templates_version": None if templates is None else _templates_version(templates),
                "history": result.history,
                "backend": cfg.train.backend,
                "init_from": cfg.train.init_from or None,
                "config": {"train": cfg.to_dict()["train"], "model": cfg.to_dict()["model"],
                           "session_key": cfg.features.session_key},
            },
            templates=templates,
        )
        return bundle

    def summary(self, bundle: Bundle) -> dict[str, Any]:
        assert isinstance(bundle, DeepLogBundle)
        return {"threshold": bundle.threshold, "sessions_version": bundle.training.get("sessions_version"),
                "train_sessions": bundle.training.get("train_sessions"),
                "validation_sessions": bundle.training.get("validation_sessions"),
                "excluded_labelled": bundle.training.get("excluded_labelled_sessions"),
                "vocabulary_size": bundle.vocabulary.size, "top_g": bundle.top_g,
                "validation_fpr": bundle.metrics.get("validation_fpr"), "nll_threshold": bundle.nll_threshold}

    # -------------------------------------------------------------- bundles
    def bundle_meta(self, bundle: Bundle) -> dict[str, Any]:
        assert isinstance(bundle, DeepLogBundle)
        return {
            "kind": self.bundle_kind,
            "model": bundle.model_cfg.to_dict(),
            "vocabulary": bundle.vocabulary.to_dict(),
            "nll_threshold": float(bundle.nll_threshold),
            "metrics": bundle.metrics,
            "training": bundle.training,
        }

    def bundle_from(self, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> DeepLogBundle:
        return DeepLogBundle(
            model_cfg=DeepLogConfig.from_dict(meta["model"]),
            state_dict=state,
            vocabulary=Vocabulary.from_dict(meta["vocabulary"]),
            nll_threshold=float(meta["nll_threshold"]),
            metrics=dict(meta.get("metrics") or {}),
            training=dict(meta.get("training") or {}),
            version=str(meta["version"]),
            templates=meta.get("templates"),
        )

    def check_bundle(self, bundle: Bundle) -> None:
        assert isinstance(bundle, DeepLogBundle)
        if bundle.vocabulary.size != bundle.model_cfg.vocab_size:
            raise ModelError(f"vocabulary has {bundle.vocabulary.size} ids, the model {bundle.model_cfg.vocab_size}")

    # -------------------------------------------------------------- scoring
    def scoring_input(self, lake: Lake, bundle: Bundle) -> ScoringInput:
        from pyspark.sql import functions as F

        assert isinstance(bundle, DeepLogBundle)
        if not lake.exists("sessions"):
            raise StageInputError(
                f"no sessions table under {lake.root}; run `loganomaly featurize` with features.session_key set"
            )
        _warn_on_template_drift(bundle, lake)
        rows = lake.read("sessions").select(
            F.col("session_key").alias("entity"), F.col("start").alias("window_start"),
            F.col("end").alias("window_end"), "date", "template_ids",
        )
        return ScoringInput(rows, "template_ids")

    def score_batch(self, bundle: Bundle, model: torch.nn.Module, device: torch.device, values: Any,
                    top_k: int, inference: Inference | None = None) -> pd.DataFrame:
        assert isinstance(bundle, DeepLogBundle) and isinstance(model, DeepLog)
        sessions = [[str(t) for t in (ids if ids is not None else [])] for ids in values.to_pylist()]
        return score_template_sessions(bundle, model, device, sessions, inference)

    def report_facts(self, bundle: Bundle) -> list[tuple[str, Any]]:
        assert isinstance(bundle, DeepLogBundle)
        return [("vocabulary", bundle.vocabulary.size), ("top_g", bundle.top_g),
                ("validation false-positive rate", bundle.metrics.get("validation_fpr"))]


def _warn_on_template_drift(bundle: DeepLogBundle, lake: Lake) -> None:
    """Template ids mean something else after a refit: say so, since every event would look unknown."""
    trained = bundle.training.get("templates_version")
    if not trained:
        return
    current = current_version(lake)
    if current is not None and current != trained:
        log.warning("deeplog %s was trained with template state %s but the lake's current state is %s; "
                    "template ids may differ (many unknown templates): retrain", bundle.version, trained, current)


KIND = DeepLogKind()
