"""What every kind over the numeric windows of ``sequences`` shares: data plan, bundle, scoring input.

The autoencoder and the supervised classifier read the same windows with the same normaliser and
feature names, so they share this base and differ only in their network, task, calibration and
explanations (:mod:`loganomaly.models.autoencoder`, :mod:`loganomaly.models.classifier`).

Training data. The driver pins the ``sequences`` version, splits it in time and plans how the
training and validation windows are dealt to ranks (:mod:`loganomaly.features.split`); the plans
travel in a :class:`WindowWork`. Every rank reads its shard with the reader ``train.reader`` names
(:data:`loganomaly.registry.READERS`), the ranks fit the normaliser together (or keep the one of
the model they continue), and the kind builds its task. The bundle records the ``sequences``
version it was trained on and the feature names stored with those windows, so scoring can refuse
windows whose columns mean something else.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from loganomaly.config import Config, TrainConfig
from loganomaly.errors import ConfigError, ModelError, StageInputError
from loganomaly.features.layout import decode_windows
from loganomaly.features.split import (
    Reader,
    Selection,
    Shard,
    ShardPlan,
    Split,
    plan_shards,
    selected_keys,
    snapshot_split,
    stored_feature_names,
    window_shape,
)
from loganomaly.features.stage import error_templates
from loganomaly.features.windows import FEATURE_NAMES, GROUP_PREFIX, HISTORY_STEPS, feature_groups
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.bundle import build_network, load_bundle, templates_of, training_templates
from loganomaly.models.indicators import Indicators, indicator_columns, signal_only_columns
from loganomaly.models.kind import (
    Bundle,
    Inference,
    ModelKind,
    RankWork,
    RowCheck,
    ScoringInput,
    TrainingPlan,
    quantiles,
)
from loganomaly.models.new_errors import NEW_ERRORS, NewErrors
from loganomaly.models.normaliser import (
    STD_FLOOR,
    Normaliser,
    PeerGroups,
    fit_group_normalisers,
    fit_normaliser,
    group_index,
)
from loganomaly.models.screening import steady_threshold
from loganomaly.models.task import FitTask, TrainResult
from loganomaly.models.unseen import EVENTS, UnseenShare
from loganomaly.registry import READERS
from loganomaly.runtime.collective import Collective
from loganomaly.runtime.device import pick_device

if TYPE_CHECKING:
    from loganomaly.ingest.templates.miner import Templates
    from loganomaly.lake.tables import Lake

log = logging.getLogger(__name__)

__all__ = ["MAX_RATE_SHARE", "MIN_TRAIN_WINDOWS", "ModelBundle", "Period", "alert_budget", "rate_share", "WindowData", "WindowKind",
           "WindowWork", "feature_names_of", "windows_of", "windows_per_entity_day"]

#: Fewest training windows a run accepts (validation needs two).
MIN_TRAIN_WINDOWS = 8


#: Largest share of windows a daily alert budget may come to (a group whose entities have about one
#: window a day and a budget near one alert a day would otherwise have no threshold at all).
MAX_RATE_SHARE = 0.5
#: Most earlier model versions a bundle lists as its lineage (``metrics.lineage``): two months of
#: nightly retrains, more than any per-entity score baseline reads back.
LINEAGE_MAX = 64
#: Microseconds per day (window starts are epoch microseconds).
_DAY_US = 86_400_000_000


def alert_budget(cfg: Config, entity: np.ndarray | None = None, window_start: np.ndarray | None = None,
                 span: tuple[int, int] | None = None) -> float:
    """Share of benign validation windows allowed to alert.

    ``train.alert_budget``, else ``1 - threshold_quantile``; with ``train.alerts_per_entity_day``
    the share that gives that many alerts per entity-day on windows as dense as the given ones
    (:func:`rate_share`; the windows of the group being calibrated).
    """
    rate = cfg.train.alerts_per_entity_day
    if rate is not None and entity is not None and window_start is not None and len(entity):
        return rate_share(rate, entity, window_start, span)
    return cfg.train.alert_budget if cfg.train.alert_budget is not None else 1.0 - cfg.train.threshold_quantile


def windows_per_entity_day(entity: np.ndarray, window_start: np.ndarray,
                           span: tuple[int, int] | None = None) -> float:
    """Windows per (entity, UTC day) pair that has any: the density a daily budget is spread over.

    ``span`` (the bounds in epoch microseconds of the period they were taken from) counts a day
    the period only partly covers as that part of a day, so a period ending at 05:00 does not
    spread its last day's few windows over a whole day. Vectorised: a training period holds
    millions of windows.
    """
    days = np.asarray(window_start, dtype=np.int64) // _DAY_US
    if not len(days):
        return 0.0
    codes = np.unique(np.asarray(entity), return_inverse=True)[1].astype(np.int64)
    first = int(days.min())
    width = int(days.max()) - first + 1
    pair_days = np.unique(codes * width + (days - first)) % width + first  # one entry per (entity, day)
    if span is None:
        return len(days) / len(pair_days)
    lo, hi = span
    covered = (np.minimum((pair_days + 1) * _DAY_US, hi) - np.maximum(pair_days * _DAY_US, lo)) / _DAY_US
    return len(days) / float(np.maximum(covered, 1e-6).sum())


#: Training windows read per piece when :func:`indicator_windows` gathers the indicator counts.
INDICATOR_PIECE_ROWS = 250_000


def indicator_windows(train_plan: ShardPlan, val_raw: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The indicator columns of every window of the training period: the training windows (read
    in pieces of :data:`INDICATOR_PIECE_ROWS`, only these columns kept) and the validation ones.

    Why all of them: the model never fits the indicator counts, so a training window is as fair
    a sample of normal for their thresholds as a validation one, and the validation blocks alone
    (a few dozen windows of a small network) missed a benign host's busiest hours, leaving the
    threshold at its floor (README "Leave one capture out").
    """
    cols = indicator_columns(names)
    reader = READERS.get("arrow")
    world = max(1, -(-train_plan.total // INDICATOR_PIECE_ROWS))
    parts = [reader.read(train_plan, Collective(rank, world), equal=False)[0].x[:, :, cols] for rank in range(world)]
    return np.concatenate([*parts, np.asarray(val_raw)[:, :, cols]]), [names[c] for c in cols]


@dataclass(frozen=True)
class Period:
    """The training period's windows as a daily alert budget needs them: entity and start (epoch
    microseconds) of each, and the period's bounds (microseconds), over which the budget's share is
    worked out (:func:`rate_share`)."""

    entity: np.ndarray
    window_start: np.ndarray
    span: tuple[int, int] | None = None

    def of(self, entities: np.ndarray) -> Period:
        """The windows of ``entities`` only (a peer group's)."""
        members = np.isin(self.entity, np.unique(entities))
        return Period(self.entity[members], self.window_start[members], self.span)

    def budget(self, cfg: Config) -> float:
        """:func:`alert_budget` over these windows."""
        rate = cfg.train.alerts_per_entity_day
        if rate is None or not len(self.entity):
            return alert_budget(cfg)
        return _share(rate, self.density())

    def density(self) -> float:
        """:func:`windows_per_entity_day` of these windows (worked out once: training asks for it
        for the global threshold, the bundle's record and the unseen-share signal)."""
        return self._density

    @functools.cached_property
    def _density(self) -> float:
        return windows_per_entity_day(self.entity, self.window_start, self.span)


def rate_share(rate: float, entity: np.ndarray, window_start: np.ndarray, span: tuple[int, int] | None = None) -> float:
    """The share of windows that flags ``rate`` windows per entity-day: ``rate / windows per entity-day``.

    Why a share at all: the threshold is a quantile of benign validation scores, so a daily budget
    has to become one. It depends on the group's density: 0.1 alerts a day is 0.1 % of the windows
    of a host active all day at 100 windows a day, and 10 % of those of an address seen in one
    window a day. Capped at :data:`MAX_RATE_SHARE` (logged).
    """
    return _share(rate, windows_per_entity_day(entity, window_start, span))


def _share(rate: float, density: float) -> float:
    """``rate / density``, capped at :data:`MAX_RATE_SHARE` (logged)."""
    if density <= 0:
        raise ModelError("no windows to turn train.alerts_per_entity_day into a share of them")
    share = rate / density
    if share > MAX_RATE_SHARE:
        log.warning("train.alerts_per_entity_day %.3g is %.3g of windows at %.3g windows per entity-day; capped at %.2g",
                    rate, share, density, MAX_RATE_SHARE)
        return MAX_RATE_SHARE
    return float(share)


@dataclass
class ModelBundle:
    """A trained window model and everything needed to score with it (autoencoder or classifier).

    Attributes:
        model_cfg: architecture, to rebuild the network; its type decides the kind
            (``model_cfg.bundle_kind``).
        state_dict: its weights.
        normaliser: per-feature statistics of the training windows.
        threshold: scores above it are anomalies (reconstruction error, or the classifier's
            probability of the anomalous class).
        feature_names: the F feature names, in model order.
        features: the feature spec the windows were built with (step_seconds, window_steps, ...).
        metrics: validation metrics (loss, score quantiles, typical per-feature error).
        training: provenance (data version, run id, history, config).
        version: content hash, set by :func:`loganomaly.models.bundle.save_bundle`, checked at load.
        templates: the template-miner state (``Templates.to_dict()``) of the training data, or
            None when templates were disabled or never fitted.
        peers: per peer group normaliser and threshold (windows with ``group:`` features);
            None for bundles without groups, which score exactly as before.
        unseen: the calibrated unseen-template share (``model.unseen_share``, autoencoder);
            None for bundles without it, which score exactly as before.
        new_errors: the calibrated new-error signal (``model.new_errors``, autoencoder); None
            for bundles without it.
        indicators: the calibrated network-indicator signal (``model.network_indicators``,
            autoencoder); None for bundles without it.
    """

    model_cfg: Any
    state_dict: dict[str, torch.Tensor]
    normaliser: Normaliser
    threshold: float
    feature_names: list[str]
    features: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    templates: dict[str, Any] | None = None
    peers: PeerGroups | None = None
    unseen: UnseenShare | None = None
    new_errors: NewErrors | None = None
    indicators: Indicators | None = None

    @property
    def kind(self) -> str:
        return str(self.model_cfg.bundle_kind)

    def normalise(self, x: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Raw windows -> model input: the window's peer-group normaliser where it has one."""
        if self.peers is None:
            return self.normaliser.transform(x)
        return self.peers.transform(x, self.normaliser, groups)

    def judged_against(self, x: np.ndarray, groups: np.ndarray, thresholds: np.ndarray) -> list[str]:
        """Per window, which peer group and baseline it was judged against (empty without groups).

        ``history_steps`` (log1p of the entity's earlier busy steps) tells whether the relative
        features compared it with its own trailing baseline or, on a cold start, its group's.
        """
        if self.peers is None:
            return [""] * len(x)
        hist = None
        if HISTORY_STEPS in self.feature_names:
            hist = np.rint(np.expm1(x[:, :, self.feature_names.index(HISTORY_STEPS)].max(axis=1))).astype(int)
        out = []
        for i, g in enumerate(groups.tolist()):
            name = self.peers.names[g] if g >= 0 else "none"
            own = "own" if g >= 0 and name in self.peers.thresholds else "global"
            text = f"peer group {name} ({own} threshold {thresholds[i]:.4g})"
            if hist is not None:
                text += (f"; baseline: own history ({hist[i]} earlier busy steps)" if hist[i] >= self.peers.min_history
                         else f"; baseline: peer group {name} (cold start, {hist[i]} earlier busy steps)")
            out.append(text)
        return out

    @property
    def window_steps(self) -> int:
        """T of the windows scored (the classifier reads any length; it keeps the featurize one)."""
        return int(getattr(self.model_cfg, "window_steps", None) or self.features["window_steps"])

    def build_model(self, device: torch.device | None = None) -> torch.nn.Module:
        """The model with its weights, in eval mode, on ``device`` (CPU by default)."""
        return build_network(self.model_cfg, self.state_dict, device)

    def template_state(self) -> Templates | None:
        """The template miner the training data were mined with, or None."""
        return templates_of(self.templates)


def feature_names_of(stored: list[str] | None, n_features: int) -> list[str]:
    """The feature names of a ``sequences`` snapshot: its ``feature_names``, else the fixed list.

    Tables written without the column (:func:`loganomaly.features.windows.write_windows`,
    benchmarks) are taken to hold :data:`loganomaly.features.windows.FEATURE_NAMES` when the count
    matches.
    """
    if stored is not None:
        return [str(n) for n in stored]
    if n_features != len(FEATURE_NAMES):
        raise StageInputError(
            f"sequences has {n_features} features and no feature_names column; re-run featurize"
        )
    return list(FEATURE_NAMES)


@dataclass
class WindowData:
    """One rank's windows, read and normalised."""

    shard: Shard
    val_shard: Shard
    order: Callable[[int], np.ndarray]
    normaliser: Normaliser
    train_x: np.ndarray
    val_x: np.ndarray
    #: Peer groups with their own normaliser.
    group_normalisers: dict[str, Normaliser] = field(default_factory=dict)


@dataclass
class WindowWork(RankWork):
    """A window model's data for the ranks: where its windows are, and the model to build.

    Attributes:
        train_plan: training windows of the pinned snapshot, dealt to ranks.
        val_plan: validation windows.
        model_cfg: model shape.
        normaliser: keep this normaliser instead of fitting one (continuing a model's training).
    """

    train_plan: ShardPlan
    val_plan: ShardPlan
    model_cfg: Any
    normaliser: Normaliser | None = None
    #: Peer groups to fit normalisers for: names and one-hot feature columns (empty: none).
    group_names: list[str] = field(default_factory=list)
    group_columns: list[int] = field(default_factory=list)
    group_min_windows: int = 30
    #: Least std of a feature in the normalisers fitted here (``train.std_floor``).
    std_floor: float = STD_FLOOR
    #: Keep these group normalisers (continuing a model's training) instead of fitting them.
    group_normalisers: dict[str, Normaliser] | None = None
    #: Feature columns the model does not see (read by count signals only; Normaliser.ignored).
    ignored: list[int] = field(default_factory=list)
    #: Whether the task needs each window's class (``sequences.n_abnormal``) from the reader.
    needs_labels = False

    def check_world(self, world: int, settings: TrainConfig) -> None:
        reader = READERS.get(settings.reader)
        if self.needs_labels and not reader.reads_labels:
            raise ConfigError(f"train.reader={settings.reader} does not read window labels (sequences.n_abnormal); "
                              f"{type(self).__name__} needs them: use one of "
                              f"{', '.join(n for n, r in READERS.items() if r.reads_labels)}")
        reader.check_available()
        self.train_plan.check_world(world)
        reader.check_dealing(self.train_plan, world)

    def read(self, settings: TrainConfig, comm: Collective) -> WindowData:
        """This rank's windows, normalised with the given normaliser or one the ranks fit together."""
        if self.val_plan.total == 0:
            raise StageInputError("no validation windows in the snapshot's training period")
        started = time.perf_counter()
        reader: Reader = READERS.get(settings.reader)
        # Both plans in one go: the Arrow reader reads the row groups they share once.
        (shard, order), (val_shard, _) = reader.read_parts([self.train_plan, self.val_plan], comm, [True, False])
        # The windows' width: the model's inputs and the columns it does not see (Normaliser.dropped).
        n_features = self.model_cfg.n_features + len(self.ignored)
        steps = getattr(self.model_cfg, "window_steps", None)
        if shard.x.shape[2] != n_features or (steps is not None and shard.x.shape[1] != steps):
            raise ModelError(f"windows have shape {shard.x.shape[1:]}, the model expects ({steps or 'any'}, {n_features})")
        normaliser = self.normaliser
        if normaliser is None:
            normaliser = fit_normaliser(shard.x, comm, self.std_floor)
        elif len(normaliser.mean) != n_features:
            raise ModelError(f"the normaliser has {len(normaliser.mean)} features, the windows {n_features}")
        own = self.group_normalisers
        if own is None and self.group_columns:
            own = fit_group_normalisers(shard.x, group_index(shard.x, self.group_columns), self.group_names,
                                        self.group_min_windows, comm, self.std_floor)
        if self.ignored:
            normaliser = normaliser.ignoring(self.ignored)
            own = {k: v.ignoring(self.ignored) for k, v in own.items()} if own is not None else None
        peers = PeerGroups(self.group_names, self.group_columns, own or {}, {}, 0.0, 0) if self.group_columns else None

        def apply(x: np.ndarray) -> np.ndarray:
            return peers.transform(x, normaliser) if peers is not None else normaliser.transform(x)

        train_x = apply(shard.x)
        val_x = apply(val_shard.x) if len(val_shard) else np.zeros((0, *shard.x.shape[1:]), np.float32)
        if comm.rank == 0:
            log.info("rank 0/%d: %d training and %d validation windows of %d and %d read in %.2fs",
                     comm.world, len(shard), len(val_shard), self.train_plan.total, self.val_plan.total,
                     time.perf_counter() - started)
        return WindowData(shard, val_shard, order, normaliser, train_x, val_x, own or {})

    def build_task(self, settings: TrainConfig, comm: Collective) -> tuple[FitTask, dict[str, Any]]:
        data = self.read(settings, comm)
        extras = {
            "normaliser": data.normaliser.to_dict(),
            "group_normalisers": {k: v.to_dict() for k, v in data.group_normalisers.items()},
            "snapshot": {"path": self.train_plan.snapshot.path, "version": self.train_plan.snapshot.version},
        }
        return self.task(data, comm), extras

    @abstractmethod
    def task(self, data: WindowData, comm: Collective) -> FitTask:
        """The kind's task over this rank's normalised windows."""


def windows_of(values: pa.Array, n_steps: int, n_features: int) -> np.ndarray:
    """An Arrow ``features`` column as ``[N, T, F]`` float32, a view of its buffers where it can be.

    Either stored layout (:mod:`loganomaly.features.layout`): binary little-endian float32 tensors
    (what featurize writes; also ``large_binary`` or a fixed-size binary of the row's width) or the
    ``array<float>`` of older tables. Both are one contiguous float32 buffer, so the windows are a
    view of it (no per-row objects, no copy).

    Raises:
        ModelError: a null or wrongly sized row.
    """
    try:
        return decode_windows(values, n_steps, n_features)
    except StageInputError as exc:  # for a bundle being applied, malformed input is a model/input mismatch
        raise ModelError(str(exc)) from exc


class WindowKind(ModelKind):
    """A kind over the numeric windows of ``sequences``; subclasses bring the network and the calibration."""

    input_table = "sequences"
    unit = "windows"

    # -------------------------------------------------------------- what a subclass provides
    @abstractmethod
    def model_config(self, cfg: Config, n_steps: int, n_features: int) -> Any:
        """The model config for windows of this shape."""

    @abstractmethod
    def work(self, train_plan: ShardPlan, val_plan: ShardPlan, model_cfg: Any, normaliser: Normaliser | None,
             cfg: Config) -> WindowWork:
        """The rank work (the kind's own settings travel in it)."""

    @abstractmethod
    def calibrate(self, model: torch.nn.Module, device: torch.device, val_x: np.ndarray, val_shard: Shard,
                  cfg: Config) -> tuple[float, dict[str, Any], np.ndarray]:
        """(threshold, metrics, validation scores) from the validation windows (normalised)."""

    #: Weights whose second axis runs over the model's input features (``nn.LSTM`` input weights).
    feature_input_weights: ClassVar[tuple[str, ...]] = ()
    #: Weights and biases whose first axis runs over the model's output features (an
    #: autoencoder's reconstruction layer; a classifier's outputs are classes).
    feature_output_weights: ClassVar[tuple[str, ...]] = ()

    def without_zeroed_inputs(self, bundle: ModelBundle, ignored: Sequence[int]) -> ModelBundle:
        """``bundle`` (``train.init_from``) as a network without the columns it only saw as zeros.

        Bundles written before 2026-12-05 fed the signal-only columns to the network set to 0
        (:attr:`Normaliser.dropped` false). Continuing one under today's code would refuse the
        narrower network, so its weights are cut to the kept columns: exact, as a zeroed input
        adds nothing through its weights and a dropped output column is never read. Any other
        bundle (none ignored, already dropped, other columns) comes back as it is.
        """
        norm = bundle.normaliser
        if norm.dropped or not norm.ignored or sorted(ignored) != norm.ignored:
            return bundle
        narrow = norm.ignoring(ignored)
        kept = torch.as_tensor(narrow.kept())
        state: dict[str, torch.Tensor] = {}
        for name, value in bundle.state_dict.items():
            # members.<k>.<layer> in a bundle of several networks: each member's layer as one's.
            tail = name.split(".", 2)[-1] if name.startswith("members.") else name
            if tail in self.feature_input_weights:
                value = value.index_select(1, kept)
            elif tail in self.feature_output_weights:
                value = value.index_select(0, kept)
            state[name] = value
        peers = bundle.peers
        if peers is not None:
            peers = dataclasses.replace(peers, normalisers={k: v.ignoring(ignored) for k, v in peers.normalisers.items()})
        log.info("train: model %s took %d zeroed columns as inputs; continuing it without them", bundle.version,
                 len(ignored))
        return dataclasses.replace(bundle, model_cfg=dataclasses.replace(bundle.model_cfg, n_features=narrow.width),
                                   state_dict=state, normaliser=narrow, peers=peers)

    def calibrate_group(self, val_scores: np.ndarray, cfg: Config,
                        previous_flagged: np.ndarray | None = None, budget: float | None = None) -> float | None:
        """A peer group's own threshold from its validation scores, or None to keep the global one.

        ``previous_flagged`` marks the group's validation windows that the previous model flagged
        (None without one); ``budget`` is the group's alert budget (None: :func:`alert_budget`).
        Kinds whose scores mean the same in every group (a probability) keep the default.
        """
        return None

    #: The kind's threshold is a budget quantile of unlabelled scores that should stay put across
    #: retrains: :meth:`finish` has the previous bundle flag the validation windows for
    #: :meth:`calibrate_screened` and bounds the move from its threshold (train.threshold_max_ratio).
    stable_threshold = False

    def calibrate_screened(self, model: torch.nn.Module, device: torch.device, val_x: np.ndarray, val_shard: Shard,
                           cfg: Config, previous_flagged: np.ndarray | None,
                           period: Period | None = None) -> tuple[float, dict[str, Any], np.ndarray]:
        """:meth:`calibrate`, told which validation windows the previous model flagged (None: no previous model).

        Kinds that calibrate on unlabelled validation windows screen them (the autoencoder); the
        default ignores the flags (a threshold chosen on labels needs no screening) and ``period``
        (entity and start of the training period's windows, for a daily alert budget).
        """
        return self.calibrate(model, device, val_x, val_shard, cfg)

    def calibrate_unseen(self, val_raw: np.ndarray, normaliser: Normaliser, names: list[str],
                         keep: np.ndarray | None, cfg: Config, budget: float | None = None) -> UnseenShare | None:
        """The kind's unseen-template signal from the raw validation windows, or None (the default: no such signal).

        ``keep`` marks the validation windows the threshold was set on (after screening), as
        :meth:`calibrate_screened` reported them under the metrics key ``_keep``; ``budget`` is
        the alert budget the error threshold was set at (None: :func:`alert_budget`).
        """
        return None

    def calibrate_new_errors(self, val_raw: np.ndarray, starts_us: np.ndarray, names: list[str], split: Split,
                             cfg: Config, budget: float | None = None) -> NewErrors | None:
        """The kind's new-error signal from the raw validation windows and their starts, or None (the default)."""
        return None

    def calibrate_indicators(self, val_raw: np.ndarray, names: list[str], cfg: Config,
                             budget: float | None = None) -> Indicators | None:
        """The kind's network-indicator signal from raw training-period windows (:func:`indicator_windows`),
        or None (the default)."""
        return None

    def flagged_by(self, previous: ModelBundle, x: np.ndarray, device: torch.device) -> np.ndarray:
        """Which raw windows ``x`` the previous bundle flags (its own normaliser, groups and threshold)."""
        model = previous.build_model(device).eval()
        out = self.score_windows(previous, model, device, x, 1)
        column = out.column("score") if isinstance(out, pa.RecordBatch) else out["score"]
        return np.asarray(column, dtype=np.float64) > float(previous.threshold)

    @abstractmethod
    def score_windows(self, bundle: ModelBundle, model: torch.nn.Module, device: torch.device, x: np.ndarray,
                      top_k: int, inference: Inference | None = None) -> pa.RecordBatch | pd.DataFrame:
        """Scores and explanations of raw windows ``x[N, T, F]`` (explanations may be left empty below the threshold).

        Returns what :meth:`~loganomaly.models.kind.ModelKind.score_batch` does: preferably
        :func:`~loganomaly.models.kind.scored_batch`'s Arrow batch.
        """

    # -------------------------------------------------------------- training
    def plan(self, spark: Any, cfg: Config, lake: Lake, model_dir: Path) -> TrainingPlan:
        version = lake.version("sequences")
        if version is None:
            raise StageInputError(f"no sequences table under {lake.root}; run `loganomaly featurize` first")
        snapshot = Snapshot(lake.path("sequences"), version)
        shape = window_shape(snapshot)
        if shape is None:
            raise StageInputError("sequences is empty: featurize made no windows (its log says how many events "
                                  "had no entity or no time; those are left out)")
        # featurize writes one name list per table version (one commit), so the first row speaks for all.
        feature_names = feature_names_of(stored_feature_names(snapshot.path, version), shape[1])
        if len(feature_names) != shape[1]:
            raise StageInputError(f"sequences has {shape[1]} features but {len(feature_names)} feature names")
        split = snapshot_split(snapshot, cfg)
        fraction = cfg.train.validation_fraction
        train_plan, val_plan = plan_shards(
            snapshot,
            [Selection(split.train_from, split.train_until, fraction, "train", cfg.train.normal_only),
             Selection(split.train_from, split.train_until, fraction, "validation", cfg.train.normal_only)],
            seed=cfg.train.seed,
        )
        n_train, n_val = train_plan.total, val_plan.total
        if n_train < MIN_TRAIN_WINDOWS or n_val < 2:
            raise StageInputError(
                f"too few windows to train: {n_train} training, {n_val} validation "
                f"(need >= {MIN_TRAIN_WINDOWS} and >= 2); widen the data or change train.train_until"
            )
        # The signal-only columns are no input of the network (Normaliser.dropped): its width is the rest.
        ignored = signal_only_columns(cfg, feature_names)
        model_cfg = self.model_config(cfg, shape[0], shape[1] - len(ignored))
        init_state, init_normaliser, init_groups = None, None, None
        if cfg.train.init_from:
            base = load_bundle(cfg.train.init_from)
            if isinstance(base, ModelBundle) and base.feature_names == feature_names:
                base = self.without_zeroed_inputs(base, ignored)
            if not isinstance(base, ModelBundle) or base.model_cfg != model_cfg or base.feature_names != feature_names:
                raise ConfigError(
                    f"train.init_from={cfg.train.init_from} holds a {base.kind} of {base.model_cfg.to_dict()}"
                    f"{' over ' + str(len(base.feature_names)) + ' features' if isinstance(base, ModelBundle) else ''}; "
                    f"this run needs {model_cfg.to_dict()} over {feature_names}"
                )
            init_state, init_normaliser = base.state_dict, base.normaliser
            init_groups = base.peers.normalisers if base.peers is not None else None
            log.info("train: continuing model %s from %s", base.version, cfg.train.init_from)
        previous = self.previous_bundle(cfg, model_dir, model_cfg, feature_names)
        work = self.work(train_plan, val_plan, model_cfg, init_normaliser, cfg)
        work.std_floor = cfg.train.std_floor
        work.ignored = ignored
        groups = feature_groups(feature_names)
        if groups:
            work.group_names = list(groups)
            work.group_columns = [feature_names.index(GROUP_PREFIX + g) for g in groups]
            work.group_min_windows = cfg.train.group_min_windows
            work.group_normalisers = init_groups
        return TrainingPlan(
            work=work,
            init_state=init_state,
            describe=f"{n_train} training and {n_val} validation windows from sequences version {version} "
                     f"(split {split.as_dict()})",
            context={"version": version, "split": split, "feature_names": feature_names,
                     "train_plan": train_plan, "val_plan": val_plan, "model_cfg": model_cfg, "previous": previous},
        )

    def previous_bundle(self, cfg: Config, model_dir: Path, model_cfg: Any,
                        feature_names: list[str]) -> ModelBundle | None:
        """The model this run replaces: ``train.init_from``, else the bundle already in ``model_dir``.

        Its threshold is what the new one is held steady against, and its flags screen the
        validation windows. Only a bundle of this kind over the same features and window length
        can judge the new windows; any other (or none, or an unreadable one) gives None.
        """
        source = cfg.train.init_from or (str(model_dir) if (Path(model_dir) / "model.json").is_file() else "")
        if not source:
            return None
        try:
            previous = load_bundle(source)
        except ModelError as exc:
            log.warning("train: previous model in %s not usable for screening and stability (%s)", source, exc)
            return None
        if (not isinstance(previous, ModelBundle) or previous.kind != self.bundle_kind
                or previous.feature_names != feature_names
                or previous.window_steps != getattr(model_cfg, "window_steps", previous.window_steps)):
            log.info("train: previous model in %s is of another kind or feature list; no screening by it", source)
            return None
        log.info("train: previous model %s (threshold %.5g) from %s", previous.version, previous.threshold, source)
        return previous

    def finish(self, plan: TrainingPlan, result: TrainResult, cfg: Config, lake: Lake, run_id: str) -> ModelBundle:
        ctx = plan.context
        normaliser = Normaliser.from_dict(result.extras["normaliser"])
        val_plan: ShardPlan = ctx["val_plan"]
        val_shard, _ = READERS.get("arrow").read(val_plan, Collective(), equal=False)
        names: list[str] = ctx["feature_names"]
        groups = feature_groups(names)
        # A daily alert budget is spread over the whole training period's windows per entity-day.
        period = None
        if cfg.train.alerts_per_entity_day is not None:
            train_entity, train_start = selected_keys(ctx["train_plan"])
            bounds: Split = ctx["split"]
            period = Period(np.concatenate([train_entity, val_shard.entity]),
                            np.concatenate([train_start, np.asarray(val_shard.window_start, dtype=np.int64)]),
                            (int(bounds.train_from * 1e6), int(bounds.train_until * 1e6)))
        peers = None
        if groups:
            peers = PeerGroups(list(groups), [names.index(GROUP_PREFIX + g) for g in groups],
                               {k: Normaliser.from_dict(v) for k, v in result.extras["group_normalisers"].items()},
                               {}, alert_budget(cfg) if period is None else period.budget(cfg),
                               cfg.features.baseline_min_steps)
            val_groups = peers.groups_of(val_shard.x)
            val_x = peers.transform(val_shard.x, normaliser, val_groups)
        else:
            val_x = normaliser.transform(val_shard.x)
        model = ctx["model_cfg"].build()
        model.load_state_dict(result.state_dict)
        device = pick_device(cfg.train.device)
        model.to(device).eval()
        previous: ModelBundle | None = ctx.get("previous")
        previous_flagged = None
        if previous is not None and cfg.train.screen_previous and self.stable_threshold:
            previous_flagged = self.flagged_by(previous, val_shard.x, device)
        threshold, metrics, val_scores = self.calibrate_screened(model, device, val_x, val_shard, cfg,
                                                                 previous_flagged, period)
        unseen = self.calibrate_unseen(val_shard.x, normaliser, names, metrics.pop("_keep", None), cfg,
                                       period.budget(cfg) if period is not None else None)
        if unseen is not None:
            metrics["unseen_share"] = {"threshold": unseen.threshold, "calibrated": unseen.calibrated,
                                       "validation_with_unseen": unseen.validation_with_unseen}
        new_errors = self.calibrate_new_errors(val_shard.x, np.asarray(val_shard.window_start, dtype=np.int64), names,
                                               ctx["split"], cfg, period.budget(cfg) if period is not None else None)
        if new_errors is not None:
            metrics["new_errors"] = {"threshold": new_errors.threshold, "calibrated": new_errors.calibrated,
                                     "validation_with_new": new_errors.validation_with_new}
        indicator_x, indicator_names = (
            indicator_windows(ctx["train_plan"], val_shard.x, names) if cfg.model.network_indicators
            else (val_shard.x, names))
        indicators = self.calibrate_indicators(indicator_x, indicator_names, cfg,
                                               period.budget(cfg) if period is not None else None)
        if indicators is not None:
            metrics["network_indicators"] = {"thresholds": dict(zip(indicators.names, indicators.thresholds, strict=True)),
                                             "validation_max": dict(zip(indicators.names, indicators.validation_max,
                                                                        strict=True))}
        metrics = {"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch, **metrics,
                   "val_score_quantiles": quantiles(val_scores)}
        if previous is not None:
            metrics.setdefault("screening", {})["previous_version"] = previous.version
            # The models this one replaced, newest first: their scores are on a comparable scale
            # (same kind, features and window; thresholds held steady), so the per-entity score
            # baselines read them as history after a nightly retrain (loganomaly.scoring.baseline).
            earlier = [previous.version, *[str(v) for v in previous.metrics.get("lineage", [])]]
            metrics["lineage"] = list(dict.fromkeys(earlier))[:LINEAGE_MAX]
            if self.stable_threshold:
                threshold, metrics["threshold_stability"] = steady_threshold(
                    threshold, previous.threshold, cfg.train.threshold_max_ratio, cfg.train.threshold_clamp)
        if peers is not None:
            # The alert budget per group, on the group's own validation windows (benign ones when
            # train.normal_only); a group with too few keeps the global threshold.
            windows_per_group = {}
            budgets_per_group: dict[str, float] = {}
            for gi, name in enumerate(peers.names):
                mine = val_scores[val_groups == gi]
                windows_per_group[name] = int(len(mine))
                flags = None if previous_flagged is None else previous_flagged[val_groups == gi]
                own = None
                if len(mine) >= cfg.train.group_min_windows:
                    budget = None
                    if period is not None:
                        # the group's entities (the group is the entity's, so its validation windows name them)
                        budget = period.of(val_shard.entity[val_groups == gi]).budget(cfg)
                        budgets_per_group[name] = budget
                    own = self.calibrate_group(mine, cfg, flags, budget)
                if own is not None and self.stable_threshold and previous is not None and previous.peers is not None:
                    own, _ = steady_threshold(own, previous.peers.thresholds.get(name), cfg.train.threshold_max_ratio,
                                              cfg.train.threshold_clamp)
                if own is not None:
                    peers.thresholds[name] = float(own)
            metrics["peer_groups"] = {"validation_windows": windows_per_group, "thresholds": dict(peers.thresholds),
                                      "own_normaliser": sorted(peers.normalisers), "budgets": budgets_per_group}
            log.info("train: peer-group thresholds %s (global %.4g, alert budget %.3g); validation windows %s",
                     {k: round(v, 5) for k, v in peers.thresholds.items()}, threshold, peers.budget,
                     windows_per_group)
        split: Split = ctx["split"]
        features: dict[str, Any] = {
            "step_seconds": cfg.features.step_seconds,
            "window_steps": cfg.features.window_steps,
            "stride_steps": cfg.features.stride_steps,
            # featurize stores counts and sums as log1p; explanations undo it for display.
            "transform": "log1p",
        }
        if NEW_ERRORS in names and lake.exists("events"):
            # Likewise the templates the training period logged at error level, so that a lake
            # scored later counts an error of theirs as new only if it is new to the model too.
            features["error_templates"] = error_templates(lake.read("events"), split.train_until)
        if peers is not None and lake.exists("peer_baselines"):
            # The training period's peer baselines travel with the model: a lake it scores but was
            # not trained on judges its cold-start entities by them (pipeline passes them on).
            table: dict[str, dict[str, float]] = {}
            for row in lake.read("peer_baselines").collect():
                table.setdefault(str(row["group"]), {})[str(row["feature"])] = float(row["baseline"])
            features["peer_baselines"] = table
        return ModelBundle(
            model_cfg=ctx["model_cfg"],
            state_dict=result.state_dict,
            normaliser=normaliser,
            threshold=threshold,
            feature_names=ctx["feature_names"],
            features=features,
            metrics=metrics,
            training={
                "run_id": run_id,
                "sequences_version": ctx["version"],
                "split": split.as_dict(),
                "train_windows": ctx["train_plan"].total,
                "validation_windows": val_plan.total,
                "backend": cfg.train.backend,
                "reader": cfg.train.reader,
                "init_from": cfg.train.init_from or None,
                "history": result.history,
                "config": {"train": cfg.to_dict()["train"], "model": cfg.to_dict()["model"]},
            },
            version="",
            templates=training_templates(cfg, lake),
            peers=peers,
            unseen=unseen,
            new_errors=new_errors,
            indicators=indicators,
        )

    def summary(self, bundle: Bundle) -> dict[str, Any]:
        assert isinstance(bundle, ModelBundle)
        screening = bundle.metrics.get("screening") or {}
        stability = bundle.metrics.get("threshold_stability") or {}
        return {"threshold": float(bundle.threshold), "sequences_version": bundle.training.get("sequences_version"),
                "train_windows": bundle.training.get("train_windows"),
                "validation_windows": bundle.training.get("validation_windows"),
                "screened_windows": int(screening.get("screened_robust", 0)) + int(screening.get("screened_previous", 0)),
                "previous_threshold": stability.get("previous_threshold"),
                "threshold_ratio": stability.get("ratio"),
                "threshold_clamped": bool(stability.get("clamped", False)),
                # Only with the unseen-template signal, so other summaries keep their keys.
                **({"unseen_share_threshold": bundle.unseen.threshold} if bundle.unseen is not None else {}),
                **({"new_errors_threshold": bundle.new_errors.threshold} if bundle.new_errors is not None else {})}

    # -------------------------------------------------------------- bundles
    def bundle_meta(self, bundle: Bundle) -> dict[str, Any]:
        assert isinstance(bundle, ModelBundle)
        return {
            "kind": bundle.kind,
            "model": bundle.model_cfg.to_dict(),
            "normaliser": bundle.normaliser.to_dict(),
            "threshold": float(bundle.threshold),
            "feature_names": list(bundle.feature_names),
            "features": bundle.features,
            "metrics": bundle.metrics,
            "training": bundle.training,
            # Only bundles with peer groups have the key: older bundles resave byte for byte.
            **({"peers": bundle.peers.to_dict()} if bundle.peers is not None else {}),
            # Likewise only bundles with the unseen-template signal (model.unseen_share).
            **({"unseen_share": bundle.unseen.to_dict()} if bundle.unseen is not None else {}),
            **({"new_errors": bundle.new_errors.to_dict()} if bundle.new_errors is not None else {}),
            **({"indicators": bundle.indicators.to_dict()} if bundle.indicators is not None else {}),
        }

    @abstractmethod
    def config_from(self, data: dict[str, Any]) -> Any:
        """The model config from ``model.json``'s ``model``."""

    def bundle_from(self, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> ModelBundle:
        return ModelBundle(
            model_cfg=self.config_from(meta["model"]),
            state_dict=state,
            normaliser=Normaliser.from_dict(meta["normaliser"]),
            threshold=float(meta["threshold"]),
            feature_names=[str(name) for name in meta["feature_names"]],
            features=dict(meta["features"]),
            metrics=dict(meta.get("metrics") or {}),
            training=dict(meta.get("training") or {}),
            version=str(meta["version"]),
            templates=meta.get("templates"),
            peers=PeerGroups.from_dict(meta["peers"]) if meta.get("peers") is not None else None,
            unseen=UnseenShare.from_dict(meta["unseen_share"]) if meta.get("unseen_share") is not None else None,
            new_errors=NewErrors.from_dict(meta["new_errors"]) if meta.get("new_errors") is not None else None,
            indicators=Indicators.from_dict(meta["indicators"]) if meta.get("indicators") is not None else None,
        )

    def check_bundle(self, bundle: Bundle) -> None:
        assert isinstance(bundle, ModelBundle)
        n, norm = len(bundle.feature_names), bundle.normaliser
        if len(norm.mean) != n:
            raise ModelError(f"normaliser has {len(norm.mean)} features, the feature names {n}")
        if norm.width != bundle.model_cfg.n_features:
            raise ModelError(f"the normaliser gives {norm.width} of the {n} features "
                             f"({len(norm.ignored) if norm.dropped else 0} left out), the model takes "
                             f"{bundle.model_cfg.n_features}")
        if bundle.peers is not None:
            wanted = [bundle.feature_names.index(GROUP_PREFIX + g) if GROUP_PREFIX + g in bundle.feature_names else -1
                      for g in bundle.peers.names]
            if wanted != bundle.peers.columns or any(len(v.mean) != n or not v.same_inputs(norm)
                                                     for v in bundle.peers.normalisers.values()):
                raise ModelError(f"peer groups {bundle.peers.names} do not match the feature names or feature count")
        if bundle.unseen is not None:
            missing = [c for c in bundle.unseen.columns if c not in bundle.feature_names]
            if missing or EVENTS not in bundle.feature_names:
                raise ModelError(f"unseen-template share reads {missing or [EVENTS]}, not among the feature names")
        if bundle.new_errors is not None and NEW_ERRORS not in bundle.feature_names:
            raise ModelError(f"the new-error signal reads {NEW_ERRORS!r}, not among the feature names")
        if bundle.indicators is not None:
            try:
                indicator_columns(bundle.feature_names, bundle.indicators.names)
            except ModelError as exc:
                raise ModelError(f"the network-indicator signal: {exc}") from None

    # -------------------------------------------------------------- scoring
    def scoring_input(self, lake: Lake, bundle: Bundle) -> ScoringInput:
        from pyspark.sql import functions as F

        assert isinstance(bundle, ModelBundle)
        if not lake.exists("sequences"):
            raise StageInputError(f"no sequences table under {lake.root}; run `loganomaly featurize` first")
        windows = lake.read("sequences")
        n_steps, n_features = bundle.window_steps, len(bundle.feature_names)
        # Same shape is not enough: the frequent-template columns must be the model's, in its order.
        if "feature_names" not in windows.columns:
            raise ModelError("sequences has no feature_names column (written before feature names were stored); "
                             "re-run featurize")
        version = bundle.version

        def shape_message(got: Any) -> str:
            return (f"sequences windows of {got} do not match the model ({n_steps} steps x {n_features} features); "
                    "re-run featurize or train")

        def names_message(got: Any) -> str:
            diff = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(list(got or []), bundle.feature_names,
                                                                         strict=False)) if a != b][:5]
            return (f"sequences feature names differ from model {version}'s ({diff or 'missing names'}); "
                    "featurize chose other templates (refit_templates?): retrain, or featurize without refitting")

        expected = F.array(*[F.lit(n) for n in bundle.feature_names]).cast("array<string>")
        checks = [
            RowCheck((F.col("n_steps") != n_steps) | (F.col("n_features") != n_features),
                     F.concat_ws(" x ", F.col("n_steps").cast("string"), F.col("n_features").cast("string")),
                     shape_message),
            RowCheck(~F.col("feature_names").eqNullSafe(expected), F.col("feature_names"), names_message),
        ]
        step_s = bundle.features.get("step_seconds")
        if step_s:
            # Same steps and names with another step size (featurize re-run with features.step_seconds
            # changed) would read per-hour counts as per-minute ones without a word: the window's span
            # must be the model's steps times its step.
            span = F.col("window_end").cast("long") - F.col("window_start").cast("long")

            def span_message(got: Any) -> str:
                return (f"sequences windows span {got} s, model {version} was trained on windows of {n_steps} steps "
                        f"of {step_s} s ({n_steps * int(step_s)} s): featurize ran with another "
                        "features.step_seconds; re-run featurize with the model's, or retrain")

            checks.append(RowCheck(span.isNull() | (span != F.lit(n_steps * int(step_s))), span.cast("string"),
                                   span_message))
        return ScoringInput(windows.select("entity", "window_start", "window_end", "date", "features", "n_steps",
                                           "n_features", "feature_names"), "features", checks)

    def score_batch(self, bundle: Bundle, model: torch.nn.Module, device: torch.device, values: Any,
                    top_k: int, inference: Inference | None = None) -> pa.RecordBatch | pd.DataFrame:
        assert isinstance(bundle, ModelBundle)
        x = windows_of(values, bundle.window_steps, len(bundle.feature_names))
        return self.score_windows(bundle, model, device, x, top_k, inference)

    def row_floats(self, bundle: Bundle) -> int | None:
        assert isinstance(bundle, ModelBundle)
        return bundle.window_steps * len(bundle.feature_names)

    def report_facts(self, bundle: Bundle) -> list[tuple[str, Any]]:
        assert isinstance(bundle, ModelBundle)
        facts: list[tuple[str, Any]] = [("features", len(bundle.feature_names)), ("window steps", bundle.window_steps)]
        if bundle.unseen is not None:
            facts.append(("unseen-template share threshold", f"{bundle.unseen.threshold:.3g} (calibrated "
                          f"{bundle.unseen.calibrated:.3g}; {bundle.unseen.validation_with_unseen} of "
                          f"{bundle.unseen.validation_windows} validation windows held unseen templates)"))
        if bundle.new_errors is not None:
            facts.append(("new error kinds threshold", f"{bundle.new_errors.threshold:.3g} (calibrated "
                          f"{bundle.new_errors.calibrated:.3g}; {bundle.new_errors.validation_with_new} of "
                          f"{bundle.new_errors.validation_windows} validation windows after the warm-up held one)"))
        if bundle.indicators is not None:
            ind = bundle.indicators
            facts.append(("network indicator thresholds", "; ".join(
                f"{n} {t:.3g} (at most {m:.0f} in {ind.validation_windows} training-period windows)"
                for n, t, m in zip(ind.names, ind.thresholds, ind.validation_max, strict=True))))
        return facts
