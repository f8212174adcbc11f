"""Typed configuration: dataclass defaults, then ``conf/default.yaml``, a profile, and ``--set`` overrides.

Layers, later wins:

1. the dataclass defaults below (local Spark, ``lake.engine: auto``: delta-spark when its jars are on
   the session, else ``deltars``);
2. ``<conf_dir>/default.yaml`` (the site's settings);
3. ``<conf_dir>/profiles/<name>.yaml`` when a profile is named;
4. ``--set section.key=value`` overrides from the command line.

Every key of every layer is checked against the declared field types: an unknown key is an
error that lists the valid keys, a ``Literal`` field lists its valid values, and a value of the
wrong type is refused rather than silently coerced. A named profile or an explicit conf dir that
does not exist is an error; only the *search* for a default conf dir may find nothing, and that is
logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from loganomaly.errors import ConfigError
from loganomaly.registry import BACKENDS, MODEL_KINDS, READERS

log = logging.getLogger(__name__)

Engine = Literal["auto", "delta", "deltars"]
Device = Literal["auto", "cpu", "cuda"]
ClassWeights = Literal["balanced", "none"]
# arrow: the default pyarrow shard reader; petastorm: only in the compatibility env (`make compat`).
Optimizer = Literal["adam", "sgd_nesterov"]
Init = Literal["auto", "default", "xavier"]
BaselineStatistic = Literal["mean", "median"]
ErrorScale = Literal["none", "typical"]


@dataclass
class SparkConfig:
    """Spark session settings. ``master`` is ignored when the job runs under spark-submit."""

    master: str = "local[*]"
    app_name: str = "loganomaly"
    shuffle_partitions: int = 8
    ansi: bool = True
    log_level: str = "WARN"
    driver_memory: str = "2g"
    arrow_max_records_per_batch: int = 4096
    # Put the delta-spark jars cached by `make setup` (loganomaly.runtime.delta_jars) on a local session,
    # with Delta's SQL extension and catalog, so lake.engine auto/delta can use them. Ignored under
    # spark-submit and on Databricks, where the launcher owns the class path.
    delta_jars: bool = True
    # Map the JVM class archive that `make setup` built (loganomaly.runtime.class_archive) into a local
    # session: the JVM maps the classes a small pipeline run loaded instead of loading them again
    # (start-up a quarter to a third shorter). Ignored under spark-submit, and when no archive fits.
    class_archive: bool = True
    # Run the Python workers under loganomaly.runtime.pyworker (spark.python.daemon.module), which
    # drops Spark's pyspark.zip and py4j zip from their path when the interpreter has the same
    # pyspark installed: each task re-read that zip's directory, about 0.12 s of CPU a task. Local
    # sessions only (under spark-submit --py-files reach the workers after their daemon starts).
    lean_worker_path: bool = True
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class LakeConfig:
    """Where the Delta tables live and which engine writes them."""

    root: str = "lake"
    engine: Engine = "auto"


@dataclass
class GenerateConfig:
    """Synthetic activity: several hosts over several days with injected anomalies."""

    hosts: int = 6
    days: int = 3
    start: str = "2024-03-04"
    seed: int = 7
    # Anomalies are injected from this day index on, so day 0 is clean training data.
    anomaly_from_day: int = 1
    conn_per_minute: float = 2.0
    syslog_per_minute: float = 0.6


@dataclass
class SourceConfig:
    """One named log source: which input files it covers and how to parse them.

    ``paths`` are shell-style globs matched against each input file's absolute path (``*`` crosses
    directories); the first source whose globs match a file parses it. ``options`` are the fields
    of :class:`loganomaly.ingest.stage.formats.FormatOptions` (``format``, ``pattern``, ``columns``,
    ``timezone``, ...), validated when ingest starts; a file no source covers is detected.
    """

    name: str = ""
    paths: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestConfig:
    """Parsing of raw log files into ``events`` and ``quarantine``."""

    # Raw text kept in a quarantine row, in characters; the original length is kept beside it.
    max_raw_chars: int = 2048
    # Files read per Spark task. 0 (the default): packed by size as Spark's file sources pack them
    # (split_bytes at most, fewer when the load is small for the cores, each file counted 4 MiB
    # more: ingest.stage.pack_files); N >= 1: N files a task, whatever their size.
    files_per_task: int = 0
    # An uncompressed file larger than this (bytes) is read by several tasks, one byte range each
    # (the size of Spark's own default split, spark.sql.files.maxPartitionBytes), when its format
    # allows it (LineParser.splittable); gz/bz2 files are read whole.
    split_bytes: int = 128 * 1024 * 1024
    # Inputs to load totalling at most this many bytes (and with no file to split) are parsed and
    # written by the driver itself, with the same functions the Spark tasks run: a small first
    # load then starts no Spark job and no Python worker (seconds on a fresh JVM). 0 turns it off.
    local_max_bytes: int = 4 * 1024 * 1024
    # With the deltars engine, parsing tasks write Parquet themselves (fast path); false sends
    # rows through a DataFrame and Lake.write, the path engine delta always takes.
    direct_write: bool = True
    # Parse the formats Spark SQL can express (JSON lines) in the JVM (loganomaly.ingest.native).
    # Off by default: it gives the same rows as the Python parsers (tested) but runs about 20x
    # slower than them (8.7-9.9k against 213-236k lines/s on 2026-12-05; README "Ingestion");
    # false parses every file in Python.
    native: bool = False
    sources: list[SourceConfig] = field(default_factory=list)


@dataclass
class TemplatesConfig:
    """Drain template mining over event messages (see :mod:`loganomaly.ingest.templates.miner`)."""

    enabled: bool = True
    # Named preset of loganomaly.ingest.templates.masking.PRESETS ("" = the general default).
    preset: str = ""
    # Overrides of TemplateConfig fields (depth, sim_th, masking, ...).
    options: dict[str, Any] = field(default_factory=dict)
    # The miner learns from messages before this ISO time; "" = from every message of the first
    # ingest. Later messages are matched without learning.
    train_until: str = ""
    # Learn again (a new state version) on the next ingest instead of matching with the saved state.
    refit: bool = False


#: Zeek weird names that describe the capture rather than a host (``features.sensor_weirds``).
SENSOR_WEIRDS: tuple[str, ...] = (
    "possible_split_routing",
    "data_before_established",
    "above_hole_data_without_any_acks",
    "ack_above_hole",
    "content_gap",
    "TCP_ack_underflow_or_misorder",
    "TCP_seq_underflow_or_misorder",
    "window_recision",
    "bad_TCP_checksum",
    "bad_UDP_checksum",
    "bad_ICMP_checksum",
    "truncated_header",
    "truncated_IP",
    "internally_truncated_header",
)


@dataclass
class FeaturesConfig:
    """Per-entity time-step features and sliding windows over them."""

    step_seconds: int = 300
    window_steps: int = 12
    stride_steps: int = 3
    # Per-step counts of the K most frequent templates of the training period (+ other, unknown).
    top_templates: int = 8
    # Count templates per step at all (``tpl:*``: the top_templates, other and unknown). Off in
    # the ``zeek`` profile: which connection templates a capture shows (protocols, services,
    # connection states, IPv6 chatter, the log types recorded) is a property of the network, not
    # of normal behaviour, so a host on another network reads as novel in every template column
    # while the behaviour that carries across networks (failures, direction, volumes, durations)
    # is drowned out (README "Leave one capture out"). Chosen with the feature list.
    template_counts: bool = True
    # Session windows: "params:<regex>" (e.g. "params:blk_-?\\d+" for HDFS blocks) or
    # "column:<events column>"; "" builds no sessions.
    session_key: str = ""
    # Numeric attributes (e.g. the value columns of a CSV metric series: cpu, mem_used) averaged
    # per step as extra features ``metric:<name>``; a value that is not a number counts as missing.
    metrics: list[str] = field(default_factory=list)
    # Categorical fields counted per value as extra features ``cat:<field>=<value>``: an events
    # column (status, proto, component, level, source, format; dst_port/src_port as text) or an
    # attribute name. The ``top_categories`` most frequent values of the training period are
    # counted, each field's other values together; chosen with the feature list, like templates.
    categories: list[str] = field(default_factory=list)
    top_categories: int = 12
    # Count, per step, the error-level events of a kind the lake never had at error level before
    # (feature ``new_errors``: the first error-level event of a template in the whole lake, and
    # every error-level line no template fits). Chosen with the feature list, like templates.
    # The feature model.new_errors reads (BGL profile; README "Detection quality").
    new_errors: bool = False
    # Zeek ``weird`` records that describe the sensor's view of the traffic, not what a host did:
    # a one-sided capture (``possible_split_routing``, ``data_before_established``), packets the
    # sensor lost (``above_hole_data_without_any_acks``, ``ack_above_hole``, ``content_gap``, the
    # ``*_underflow_or_misorder`` pair, ``window_recision``), checksum offload on the monitored
    # host (``bad_*_checksum``) and truncated captures. Featurize leaves them out of every step
    # (they stay in ``events``): counted as the host's warnings and log lines they made a busy
    # host on a tap that sees one direction look abnormal all day (README "Sensor weirds").
    # Matched on the record's ``weird`` component and its ``name`` attribute; [] counts them all.
    sensor_weirds: list[str] = field(default_factory=lambda: list(SENSOR_WEIRDS))
    # Network indicators (features ``repeated_failures``, ``unnamed_requests``,
    # ``malformed_requests``, ``failed_targets``): the most TCP attempts to one peer and port that
    # never connected, HTTP/TLS requests to a bare address (no host or server name), requests
    # that are not the protocol of their connection (Zeek ``bad_HTTP_request`` weirds), and how
    # many peers and ports the never-connected attempts went to, per step. Malware's habits, not
    # the network's volume, so they carry to hosts and networks the model never saw (Zeek profile;
    # README "Leave one capture out").
    network_indicators: bool = False
    # Entity features (loganomaly.features.entities): direction, failure share, novelty, per-entity
    # trailing baselines and the peer group one-hot (and with them per-group normalisers and
    # thresholds in the model). Chosen when the feature list is chosen (a new lake, or a refit);
    # an existing ``sequences`` keeps its list, so a model trained on it keeps scoring. Off by
    # default and in every profile but ``metrics`` (where the trailing baselines follow level
    # shifts and drift): on the synthetic demo the extra features dilute a one-host
    # traffic spike below the normal windows' 99th percentile, and on Zeek (train 008, score
    # 010+001) they lowered the autoencoder's ROC-AUC from 0.727 to 0.656 (README).
    entity_features: bool = False
    # Networks whose addresses are local (group "internal"); other addresses are "external".
    # Zeek's local_orig/local_resp, where present, decide first. Default: RFC 1918, loopback,
    # link-local and IPv6 unique-local.
    local_networks: list[str] = field(
        default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                                 "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7"]
    )
    # Role groups that override internal/external: group name -> comma-separated CIDRs and/or
    # ``re:<regex>`` over the entity name (e.g. servers: "10.0.1.0/24,re:^db-").
    groups: dict[str, str] = field(default_factory=dict)
    # Group of an entity that is not an address (a hostname, a component, a metric series).
    default_group: str = "default"
    # Trailing baseline: the mean of the entity's earlier busy steps within this many steps.
    baseline_steps: int = 288
    # Which statistic of those steps is the baseline: ``mean`` (of the log1p values) or
    # ``median``. The median follows a level shift within half the horizon and is not moved by
    # an incident shorter than that, where the mean carries an incident into the next hours'
    # baseline and absorbs a shift only linearly over the whole horizon (README "Metric series
    # that drift").
    baseline_statistic: BaselineStatistic = "mean"
    # Keep each metric's own level (``metric:<name>``) as a feature beside its trailing-baseline
    # twin (``rel:metric:<name>``). False (needs entity_features) judges metric series only
    # against the entity's own recent level, so a level shift or slow drift stops counting once
    # the baseline has followed it; a normaliser fitted once on the training levels cannot.
    metric_levels: bool = True
    # An entity with fewer earlier busy steps than this is judged against its peer group's
    # training-period baseline instead (cold start).
    baseline_min_steps: int = 6


@dataclass
class ModelConfig:
    """Which model and its size.

    ``kind``: ``autoencoder`` (LSTM sequence autoencoder over the numeric time-step windows of
    ``sequences``), ``deeplog`` (next-event LSTM over the template-id sequences of ``sessions``;
    needs ``features.session_key``) or ``classifier`` (supervised LSTM over the same windows as
    the autoencoder; a window is anomalous when it holds an event labelled abnormal, so it needs
    labelled data: Zeek's ``label`` field, a label file).
    """

    kind: str = "autoencoder"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    # autoencoder: how many autoencoders of this shape train side by side (each initialised on its
    # own, same batches); a window's error is the mean of theirs. A single network's ranking moves
    # with its seed; the mean of several is steadier. Costs that many times the training and
    # scoring compute. 1 (every profile): one network.
    members: int = 1
    # deeplog: history length, embedding width, candidates that count as expected, and the
    # false-positive rate on validation normal sessions that chooses top_g when top_g is 0.
    history: int = 10
    embedding_dim: int = 16
    top_g: int = 0
    target_fpr: float = 0.01
    # deeplog: templates found in fewer than this share of the training sessions are treated as
    # unknown (always unexpected). 0 trusts every training template; set it near the expected
    # share of anomalous sessions when the training data are not known to be clean.
    min_template_support: float = 0.0
    # deeplog: close every session with an "<END>" pseudo-event the model must predict, so a
    # session that stops early is anomalous too.
    session_end: bool = True
    # classifier: weigh both classes alike in the loss (``balanced``; attacks are rare) or not.
    class_weights: ClassWeights = "balanced"
    # autoencoder: a second signal beside the reconstruction error, the share of a window's events
    # whose templates the model never saw (``tpl:unknown`` and template columns that were 0 in every
    # training window; loganomaly.models.unseen), with its own threshold calibrated on the same
    # screened validation windows at the same alert budget. A window is flagged when either signal
    # passes its threshold (score = error, plus threshold * share / share threshold where the share
    # passes) and its explanation says which. Needs templates (the ``tpl:unknown`` feature). Off by default.
    unseen_share: bool = False
    # autoencoder with unseen_share: the least share threshold, in (0, 1]. Where no validation
    # window holds an unseen template the calibrated share is 0, and without this floor one unseen
    # event among many would be an alert.
    unseen_share_min: float = 0.1
    # autoencoder: a second signal of its own, error-level events of a new kind (the
    # ``new_errors`` feature, features.new_errors; loganomaly.models.new_errors). Its threshold is
    # the alert-budget quantile of that count over the validation windows after the first
    # ``new_errors_warmup`` of the training period (at a lake's start every kind is new), so a
    # window holding more than normal operation brings is flagged, and its explanation says so.
    # Off by default.
    new_errors: bool = False
    new_errors_warmup: float = 0.25
    # autoencoder: a signal of network indicators (features.network_indicators; loganomaly.models.
    # indicators): the model does not see those features, each is judged as a count per window
    # against twice the alert-budget quantile of the validation windows (at least 3). A window it
    # flags keeps its flag under score.entity_baseline. Off by default; on in the zeek profile.
    network_indicators: bool = False
    # autoencoder: how the window score weighs each feature's squared reconstruction error.
    # ``none``: the plain mean over features and steps. ``typical``: each feature's error divided
    # by its typical error on the normal validation windows before the mean (a standardised
    # residual): a feature the model always reconstructs closely (one that never varied in
    # training, e.g. inbound connections where training had none) counts as much when it is off
    # as a feature whose error is always large, instead of being drowned by many moderately
    # unusual ones. The weights are stored with the model (``metrics.error_weights``).
    error_scale: ErrorScale = "none"


@dataclass
class TrainConfig:
    """Training loop, split and threshold calibration."""

    backend: str = "local"
    # How ranks read their shard: ``arrow`` (loganomaly.training.readers.arrow) or ``petastorm``
    # (loganomaly.training.readers.petastorm, PySpark 4.0 + pyarrow 14 environment only).
    reader: str = "arrow"
    num_processes: int = 2
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 6
    seed: int = 123
    # End of the training period: windows ending at or before this ISO date (its 00:00 UTC) or
    # timestamp (UTC unless it names a zone) train and validate (``train --until``); empty means
    # the first ``train_fraction`` of the time range.
    train_until: str = ""
    train_fraction: float = 0.34
    # Train on normal windows only: leave out windows holding an event whose label is not normal
    # (``sequences.n_abnormal``). For data with labels (Zeek's Benign/Malicious); unlabelled
    # events count as normal, so it changes nothing on unlabelled logs.
    normal_only: bool = False
    # Share of the training period held out for early stopping and the threshold: evenly spread
    # time blocks of it (features.split.validation_block_mask), so validation sees every time of day.
    validation_fraction: float = 0.25
    threshold_quantile: float = 0.995
    # Alert budget: the share of benign validation windows allowed to alert, calibrated per peer
    # group (windows with group features); empty: 1 - threshold_quantile.
    alert_budget: float | None = None
    # The same budget as alerts a day: at most this many benign alerts per entity-day (e.g. 0.1:
    # one false alert per entity every ten days). Turned into a share per peer group from its
    # training-period windows' density (windows per entity-day), so a group of hosts seen once a day
    # and a group of busy servers both get about this many; excludes alert_budget (autoencoder).
    alerts_per_entity_day: float | None = None
    # A peer group needs this many training windows for its own normaliser and validation
    # windows for its own threshold; fewer fall back to the global ones.
    group_min_windows: int = 30
    # Least standard deviation a feature gets in the normaliser (log units, the stored features'
    # scale). The default only keeps a feature constant in training finite; a higher floor stops
    # rare-but-normal values (a category count one training window in a thousand holds: std ~0.02)
    # from reading as tens of standard deviations and drowning every other feature. NSL-KDD sets
    # 0.1, chosen on a validation split of its training file (README).
    std_floor: float = 0.01
    # Screening of the validation windows before the budget quantile (autoencoder; issue 13 point 7):
    # a window whose log score lies beyond median + screen_mad_k robust standard deviations
    # (1.4826 * MAD of the log scores) is a suspected incident left in the unlabelled training
    # period and does not set the threshold; empty: no screening. 5 was chosen on validation
    # scores only (bench/walkforward.py; README "Retraining as users run it").
    screen_mad_k: float | None = 5.0
    # With a previous bundle (train.init_from, else the bundle already in --model-dir) over the
    # same features: the validation windows it flags beyond a budget's worth are left out (an
    # incident it saw); those within it stay with capped scores, so retraining on the same windows
    # keeps the threshold where it was (loganomaly.models.screening.screened_budget).
    screen_previous: bool = True
    # A previous model flagging more than this share of the validation windows is judged
    # miscalibrated on the new data (not an incident that long) and its flags are ignored.
    screen_previous_max_share: float = 0.05
    # Stability across retrains: a threshold more than this factor above or below the previous
    # bundle's is clamped to the factor (threshold_clamp) or kept with a warning; empty: no check.
    threshold_max_ratio: float | None = 10.0
    threshold_clamp: bool = True
    device: Device = "auto"
    bf16: bool = False
    # Optimiser and its recipe, for every model kind. The seed article's recipe is the profile
    # conf/profiles/seed_article.yaml (--profile seed_article).
    optimizer: Optimizer = "adam"
    momentum: float = 0.9
    # Clip every gradient element to [-clip_value, clip_value] before a step; empty: no clipping.
    clip_value: float | None = None
    # Polyak averaging: keep an exponential moving average of the weights with this decay per step
    # (e.g. 0.999; the first steps use min(decay, (1 + n) / (10 + n)) so early weights fade fast).
    # Validation, early stopping and the saved model then use the averaged weights, which move less
    # from epoch to epoch and seed to seed than the last step's. Empty: off.
    ema_decay: float | None = None
    # Weight initialisation: auto (the kind's own: Xavier for the autoencoder, torch's default for
    # DeepLog and the classifier), default (torch's) or xavier (Xavier-uniform weights, zero biases).
    init: Init = "auto"
    # Continue the run whose checkpoint is in <model-dir>/checkpoints (after a crash or a
    # preemption); without one there, training starts fresh.
    resume: bool = False
    # Continue training an existing model on new data: the bundle directory whose weights (and
    # normaliser, or DeepLog vocabulary) the new model starts from. Its shape must match.
    init_from: str = ""
    # Track the run in MLflow (needs `pip install 'loganomaly[mlflow]'`): the model and train
    # settings as params, each epoch's losses as metrics (rank 0), the bundle as artifacts.
    mlflow: bool = False
    # Tracking URI (file:/path/mlruns, http://host:5000, databricks); empty: $MLFLOW_TRACKING_URI,
    # else MLflow's default (./mlruns). A relative path is made absolute, so every rank uses the same store.
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "loganomaly"
    # Log into this existing run instead of starting one (e.g. one an orchestrator started); train
    # sets it for its ranks.
    mlflow_run_id: str = ""


@dataclass
class ScoreConfig:
    """Scoring: how many features explain a flagged window, and how the forward passes run."""

    explain_top_k: int = 3
    # bf16 autocast of the scoring forward passes on CUDA workers (ignored on CPU workers, where an
    # LSTM under bf16 autocast fails in oneDNN). Scores move by about bf16's precision (~3 digits).
    bf16: bool = False
    # Inputs of at most this many bytes (the rows' features) are scored by the driver, which has
    # the model loaded, instead of by Python workers that each import torch and load it first (most
    # of a small night's time in a fresh process); the same rows, scores and writes. 0 turns it off.
    local_max_bytes: int = 32 * 1024 * 1024
    # Per-entity score baselines (loganomaly.scoring.baseline): a window of an entity of one of
    # ``baseline_groups`` (the ``entities`` table's peer group) that has at least
    # ``baseline_min_windows`` earlier scored windows is flagged only when its score is also far
    # above the entity's own recent scores: log1p(score) > median + baseline_k x spread of its last
    # ``baseline_windows`` scores (this model's, reaching back ``baseline_days`` days). Why: a busy
    # internal host's normal is not the training hosts' normal, and the model's threshold flags it
    # all day. External addresses keep the model's threshold alone: an attacker repeating itself
    # must not become its own normal. Off by default; on in the zeek profile and (group default) the metrics one.
    entity_baseline: bool = False
    baseline_groups: list[str] = field(default_factory=lambda: ["internal"])
    baseline_min_windows: int = 6
    baseline_windows: int = 48
    baseline_k: float = 3.0
    baseline_days: int = 7
    # Also the same UTC hour of the entity's earlier days (within baseline_days): a window is judged
    # against whichever of the two baselines is higher. Why: a workstation's first busy hour after
    # a quiet night is far above its last ``baseline_windows`` (quiet) scores every morning; its
    # mornings of earlier days say it is its normal. Where no earlier day has that hour
    # (``baseline_min_windows`` windows of it) the recent baseline alone judges, as before.
    baseline_daily: bool = True


@dataclass
class Config:
    """The whole configuration of a run."""

    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, e.g. for logging or storing beside a model."""
        return dataclasses.asdict(self)


def valid_keys(cfg: Any = None) -> list[str]:
    """All ``section.key`` names that may be set."""
    cfg = cfg if cfg is not None else Config()
    keys = []
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            keys.append(f"{section.name}.{f.name}")
    return keys


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp``; convert only where lossless."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}")
        if typing.get_args(tp)[1] is Any:
            # Free-form options: checked by the component that consumes them.
            return {str(k): v for k, v in value.items()}
        return {str(k): str(v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}")
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"{key}: unknown keys {unknown}; valid keys: {', '.join(names)}")
        hints = typing.get_type_hints(tp)
        return tp(**{k: _coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} expects a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[]") for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if value is None:
            return ""
        if isinstance(value, (dt.date, dt.datetime)):
            # YAML reads an unquoted 2024-03-06 (in a file or a --set) as a date: keep its ISO text.
            return value.isoformat()
        raise ConfigError(f"{key} expects a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # pragma: no cover


def _set(cfg: Config, key: str, value: Any) -> None:
    section_name, _, name = key.partition(".")
    section = (
        getattr(cfg, section_name, None)
        if section_name in {f.name for f in dataclasses.fields(cfg)}
        else None
    )
    if section is None or not name or name not in {f.name for f in dataclasses.fields(section)}:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys(cfg))}")
    hints = typing.get_type_hints(type(section))
    setattr(section, name, _coerce(value, hints[name], key))


def apply_mapping(cfg: Config, data: dict[str, Any], origin: str) -> None:
    """Apply a nested ``{section: {key: value}}`` mapping (one YAML layer) to ``cfg``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"{origin}: section {section!r} must be a mapping; valid keys: {', '.join(valid_keys(cfg))}"
            )
        for name, value in values.items():
            try:
                _set(cfg, f"{section}.{name}", value)
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is read as YAML (so ``3``, ``true``, ``[a, b]`` work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    except ValueError:
        # Looks like a YAML timestamp but is no calendar date (2024-13-06): keep the text, so the
        # setting's own check names it.
        value = raw.strip()
    return key.strip(), value


def find_conf_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The conf dir: explicit argument, ``$LOGANOMALY_CONF_DIR``, ``./conf``, or the source checkout's.

    An explicit or environment path that does not exist is an error; the search of the
    implicit places may find nothing (e.g. a wheel on a cluster), then only the defaults apply.
    """
    for given in (explicit, os.environ.get("LOGANOMALY_CONF_DIR")):
        if given:
            path = Path(given)
            if not (path / "default.yaml").is_file():
                raise ConfigError(f"conf dir {path} has no default.yaml")
            return path
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parents[2] / "conf"):
        if (candidate / "default.yaml").is_file():
            return candidate
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return data or {}


def load_config(
    profile: str | None = None,
    overrides: list[str] | None = None,
    conf_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Build the run's configuration from the layers described in the module docstring.

    Example:
        >>> cfg = load_config(profile=None, overrides=["train.epochs=3"])
        >>> cfg.train.epochs
        3
    """
    cfg = Config()
    directory = find_conf_dir(conf_dir)
    if directory is None:
        if profile:
            raise ConfigError(f"profile {profile!r} requested but no conf dir was found (use --conf-dir)")
        log.info("no conf dir found; using built-in defaults")
    else:
        apply_mapping(cfg, _read_yaml(directory / "default.yaml"), str(directory / "default.yaml"))
        loaded = [str(directory / "default.yaml")]
        if profile:
            path = directory / "profiles" / f"{profile}.yaml"
            if not path.is_file():
                available = sorted(p.stem for p in (directory / "profiles").glob("*.yaml"))
                raise ConfigError(f"unknown profile {profile!r}; available: {', '.join(available) or 'none'}")
            apply_mapping(cfg, _read_yaml(path), str(path))
            loaded.append(str(path))
        log.info("config loaded from %s", ", ".join(loaded))
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def check_instant(key: str, value: str) -> None:
    """Refuse a setting that is neither empty nor an ISO date or timestamp (what ``datetime.fromisoformat`` reads).

    Checked with the rest of the config, so ``train --until 2024-13-01`` stops before Spark starts
    instead of deep inside the training split.

    Raises:
        ConfigError: naming the key, the value and the accepted forms.
    """
    if not value:
        return
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{key}={value!r} is not an ISO date or timestamp (e.g. 2024-03-06, 2024-03-06T12:00, "
            f"2024-03-06T12:00:00+00:00)"
        ) from None


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    checks = [
        (cfg.features.step_seconds > 0, "features.step_seconds must be > 0"),
        (cfg.features.window_steps >= 1, "features.window_steps must be >= 1"),
        (cfg.features.stride_steps >= 1, "features.stride_steps must be >= 1"),
        (cfg.features.top_templates >= 0, "features.top_templates must be >= 0"),
        (
            cfg.features.template_counts or not cfg.model.unseen_share,
            "model.unseen_share reads the tpl:unknown count: keep features.template_counts=true",
        ),
        (
            all(m and m.replace("_", "").replace(".", "").isalnum() for m in cfg.features.metrics),
            "features.metrics names must be letters, digits, '_' or '.'",
        ),
        (cfg.features.top_categories >= 1, "features.top_categories must be >= 1"),
        (cfg.model.members >= 1, "model.members must be >= 1"),
        (
            all(c and c.replace("_", "").replace(".", "").isalnum() for c in cfg.features.categories)
            and len(set(cfg.features.categories)) == len(cfg.features.categories),
            "features.categories names must be letters, digits, '_' or '.', each once",
        ),
        (
            all(isinstance(w, str) and w and w.strip() == w for w in cfg.features.sensor_weirds),
            "features.sensor_weirds must be weird names (non-empty text without edge spaces)",
        ),
        (
            cfg.features.session_key == "" or cfg.features.session_key.startswith(("params:", "column:")),
            "features.session_key must be empty, params:<regex> or column:<name>",
        ),
        (0 < cfg.train.train_fraction <= 1, "train.train_fraction must be in (0, 1]"),
        (0 < cfg.train.validation_fraction < 1, "train.validation_fraction must be in (0, 1)"),
        (0 <= cfg.model.min_template_support < 1, "model.min_template_support must be in [0, 1)"),
        (0 < cfg.model.unseen_share_min <= 1, "model.unseen_share_min must be in (0, 1] (a share of a window's events)"),
        (
            not cfg.model.unseen_share or cfg.model.kind == "autoencoder",
            f"model.unseen_share is a signal of model.kind=autoencoder; model.kind={cfg.model.kind} has none",
        ),
        (
            not cfg.model.new_errors or cfg.model.kind == "autoencoder",
            f"model.new_errors is a signal of model.kind=autoencoder; model.kind={cfg.model.kind} has none",
        ),
        (
            not cfg.model.new_errors or cfg.features.new_errors,
            "model.new_errors reads the new_errors feature: set features.new_errors=true as well",
        ),
        (
            cfg.model.members == 1 or cfg.model.kind == "autoencoder",
            f"model.members averages autoencoders; model.kind={cfg.model.kind} trains one network",
        ),
        (
            not cfg.model.network_indicators or cfg.model.kind == "autoencoder",
            f"model.network_indicators is a signal of model.kind=autoencoder; model.kind={cfg.model.kind} has none",
        ),
        (
            not cfg.model.network_indicators or cfg.features.network_indicators,
            "model.network_indicators reads the indicator features: set features.network_indicators=true as well",
        ),
        (
            cfg.model.error_scale == "none" or cfg.model.kind == "autoencoder",
            f"model.error_scale weighs the autoencoder's errors; model.kind={cfg.model.kind} has none",
        ),
        (0 <= cfg.model.new_errors_warmup < 1, "model.new_errors_warmup must be in [0, 1) (a share of the training period)"),
        (0 < cfg.train.threshold_quantile < 1, "train.threshold_quantile must be in (0, 1)"),
        (cfg.train.alert_budget is None or 0 < cfg.train.alert_budget < 1, "train.alert_budget must be in (0, 1)"),
        (
            cfg.train.alerts_per_entity_day is None
            or (math.isfinite(cfg.train.alerts_per_entity_day) and cfg.train.alerts_per_entity_day > 0),
            "train.alerts_per_entity_day must be a number > 0 (alerts per entity per day), or empty",
        ),
        (
            cfg.train.alerts_per_entity_day is None or cfg.train.alert_budget is None,
            "set train.alert_budget (a share of windows) or train.alerts_per_entity_day (alerts a day), not both",
        ),
        (
            cfg.train.alerts_per_entity_day is None or cfg.model.kind == "autoencoder",
            f"train.alerts_per_entity_day calibrates the autoencoder's threshold; model.kind={cfg.model.kind} "
            "has its own (deeplog: train.threshold_quantile, classifier: best validation F1)",
        ),
        (cfg.train.group_min_windows >= 2, "train.group_min_windows must be >= 2"),
        (
            math.isfinite(cfg.train.std_floor) and cfg.train.std_floor > 0,
            f"train.std_floor must be a number > 0 (e.g. 0.01, the default), got {cfg.train.std_floor!r}",
        ),
        (cfg.train.screen_mad_k is None or cfg.train.screen_mad_k > 0, "train.screen_mad_k must be > 0 (or empty)"),
        (0 < cfg.train.screen_previous_max_share <= 1, "train.screen_previous_max_share must be in (0, 1]"),
        (
            cfg.train.threshold_max_ratio is None or cfg.train.threshold_max_ratio > 1,
            "train.threshold_max_ratio must be > 1 (or empty)",
        ),
        (cfg.features.baseline_steps >= 1, "features.baseline_steps must be >= 1"),
        (cfg.features.baseline_min_steps >= 1, "features.baseline_min_steps must be >= 1"),
        (
            cfg.features.metric_levels or cfg.features.entity_features,
            "features.metric_levels: false needs features.entity_features: true (the metrics then enter only "
            "relative to the entity's trailing baseline, which the entity features compute)",
        ),
        (
            all(g.replace("_", "").replace("-", "").isalnum() for g in [*cfg.features.groups,
                                                                          cfg.features.default_group]),
            "features.groups names and features.default_group must be letters, digits, '_' or '-'",
        ),
        (cfg.score.baseline_min_windows >= 2, "score.baseline_min_windows must be >= 2"),
        (cfg.score.baseline_windows >= cfg.score.baseline_min_windows,
         "score.baseline_windows must be >= score.baseline_min_windows"),
        (math.isfinite(cfg.score.baseline_k) and cfg.score.baseline_k > 0, "score.baseline_k must be a number > 0"),
        (cfg.score.baseline_days >= 1, "score.baseline_days must be >= 1"),
        (
            not cfg.score.entity_baseline or bool(cfg.score.baseline_groups),
            "score.entity_baseline needs at least one group in score.baseline_groups",
        ),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.num_processes >= 1, "train.num_processes must be >= 1"),
        (0 <= cfg.train.momentum < 1, "train.momentum must be in [0, 1)"),
        (
            cfg.train.optimizer != "sgd_nesterov" or cfg.train.momentum > 0,
            "train.optimizer=sgd_nesterov needs train.momentum > 0",
        ),
        (cfg.train.clip_value is None or cfg.train.clip_value > 0, "train.clip_value must be > 0 (or empty)"),
        (
            cfg.train.ema_decay is None or (math.isfinite(cfg.train.ema_decay) and 0 < cfg.train.ema_decay < 1),
            f"train.ema_decay must be in (0, 1) (e.g. 0.999) or empty, got {cfg.train.ema_decay!r}",
        ),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (
            math.isfinite(cfg.train.learning_rate) and cfg.train.learning_rate > 0,
            f"train.learning_rate must be a positive number, got {cfg.train.learning_rate!r}",
        ),
        (cfg.generate.hosts >= 1 and cfg.generate.days >= 1, "generate.hosts and generate.days must be >= 1"),
        (cfg.ingest.max_raw_chars >= 16, "ingest.max_raw_chars must be >= 16"),
        (cfg.ingest.files_per_task >= 0, "ingest.files_per_task must be >= 0 (0: packed by size)"),
        (cfg.ingest.split_bytes >= 1024, "ingest.split_bytes must be >= 1024 (bytes)"),
        (cfg.score.local_max_bytes >= 0, "score.local_max_bytes must be >= 0 (bytes; 0 turns the driver path off)"),
        (cfg.ingest.local_max_bytes >= 0, "ingest.local_max_bytes must be >= 0 (bytes; 0 turns the driver path off)"),
        (
            all(src.name and src.paths for src in cfg.ingest.sources),
            "every ingest.sources entry needs a name and at least one path glob",
        ),
        (
            len({src.name for src in cfg.ingest.sources}) == len(cfg.ingest.sources),
            "ingest.sources names must be unique",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for key, value in (("train.train_until", cfg.train.train_until), ("templates.train_until", cfg.templates.train_until)):
        check_instant(key, value)
    # The registries hold the one list of each extension point's names (plug-ins included).
    MODEL_KINDS.check(cfg.model.kind)
    BACKENDS.check(cfg.train.backend)
    READERS.check(cfg.train.reader)
