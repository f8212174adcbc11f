"""Model bundles: ``model.safetensors`` (weights) + ``model.json`` (everything else), of two kinds.

A bundle's ``kind`` (a field of ``model.json``) says which model it holds:

* ``lstm_autoencoder`` (:class:`ModelBundle`): the LSTM autoencoder over ``sequences`` windows,
  with its normaliser, feature names and window spec, threshold, metrics, and training provenance.
* ``deeplog`` (:class:`DeepLogBundle`): the next-event LSTM over ``sessions``, with its
  :class:`~loganomaly.models.sequence.DeepLogConfig` (whose ``top_g`` is the scoring rule), the
  training :class:`~loganomaly.models.sequence.Vocabulary`, an NLL threshold, metrics and
  provenance (the ``sessions`` version it was trained on included).

Both may carry ``templates``: the template-miner state (``Templates.to_dict()``) the training data
were mined with, so a bundle alone says which template ids its inputs must use. The key is
written only when a state is set, so an autoencoder bundle without one is byte-for-byte what
earlier releases wrote and keeps its version.

Loading never unpickles: weights are safetensors, the rest is JSON. :func:`load_bundle` reads the
autoencoder (the stage ``score`` has always used), :func:`load_deeplog_bundle` a DeepLog bundle and
:func:`load_any_bundle` whichever kind is there; :func:`save_bundle` writes either. An unknown kind
or format version is refused with a :class:`~loganomaly.errors.ModelError`, never guessed.

The bundle's ``version`` is a short hash of its whole content (weights and every JSON field), so
identical bundles share a version, scores can be traced to the exact model, and an edit to either
file (a hand-tuned threshold, swapped weights) is detected at load. Files are written to temporary
names and renamed into place; a crash between the two renames leaves files whose versions
disagree, which loading refuses, so a half-written bundle never loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loganomaly.errors import ModelError
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.sequence import ClassifierConfig, DeepLog, DeepLogConfig, LSTMClassifier, Vocabulary
from loganomaly.runtime.files import atomic_write

if TYPE_CHECKING:
    from loganomaly.ingest.templates.miner import Templates

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Kind of the LSTM autoencoder bundle (the only kind before DeepLog; kept as ``KIND``).
KIND = "lstm_autoencoder"
DEEPLOG_KIND = "deeplog"
#: The supervised LSTM classifier over the same windows as the autoencoder (a ModelBundle too).
CLASSIFIER_KIND = "lstm_classifier"
#: Every kind this code reads.
KINDS = (KIND, DEEPLOG_KIND, CLASSIFIER_KIND)
WEIGHTS = "model.safetensors"
META = "model.json"
#: Hex digits of the content hash kept as the version: short enough to read in a table.
VERSION_CHARS = 12


def _templates_of(data: dict[str, Any] | None) -> Templates | None:
    """The miner state a bundle carries, rebuilt (imported lazily: scoring rarely needs it)."""
    if data is None:
        return None
    from loganomaly.ingest.templates.miner import Templates

    return Templates.from_dict(data)


@dataclass
class ModelBundle:
    """A trained window model and everything needed to score with it: the LSTM autoencoder (kind
    ``lstm_autoencoder``) or the supervised LSTM classifier (kind ``lstm_classifier``). Both read
    the numeric windows of ``sequences`` with the same normaliser and feature names.

    Attributes:
        model_cfg: architecture, to rebuild the network; its type decides the kind.
        state_dict: its weights.
        normaliser: per-feature statistics of the training windows.
        threshold: scores above it are anomalies (reconstruction error, or the classifier's
            probability of the anomalous class).
        feature_names: the F feature names, in model order.
        features: the feature spec the windows were built with (step_seconds, window_steps, ...).
        metrics: validation metrics (loss, score quantiles, typical per-feature error).
        training: provenance (data version, run id, history, config).
        version: content hash, set by :func:`save_bundle` and checked by :func:`load_bundle`.
        templates: the template-miner state (``Templates.to_dict()``) of the training data, or
            None when templates were disabled or never fitted.
    """

    model_cfg: LSTMAutoencoderConfig | ClassifierConfig
    state_dict: dict[str, torch.Tensor]
    normaliser: Normaliser
    threshold: float
    feature_names: list[str]
    features: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    templates: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return CLASSIFIER_KIND if isinstance(self.model_cfg, ClassifierConfig) else KIND

    @property
    def window_steps(self) -> int:
        """T of the windows scored (the classifier reads any length; it keeps the featurize one)."""
        if isinstance(self.model_cfg, LSTMAutoencoderConfig):
            return self.model_cfg.window_steps
        return int(self.features["window_steps"])

    def build_model(self, device: torch.device | None = None) -> torch.nn.Module:
        """The model with its weights, in eval mode, on ``device`` (CPU by default)."""
        model: torch.nn.Module = LSTMAutoencoder(self.model_cfg) if isinstance(self.model_cfg, LSTMAutoencoderConfig) \
            else LSTMClassifier(self.model_cfg)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise ModelError(f"weights do not match the model config: {exc}") from None
        return model.to(device or torch.device("cpu")).eval()

    def template_state(self) -> Templates | None:
        """The template miner the training data were mined with, or None."""
        return _templates_of(self.templates)


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

    kind: ClassVar[str] = DEEPLOG_KIND

    @property
    def top_g(self) -> int:
        """Candidates that count as expected (stored in the model config)."""
        return self.model_cfg.top_g

    def build_model(self, device: torch.device | None = None) -> DeepLog:
        """The model with its weights, in eval mode, on ``device`` (CPU by default)."""
        model = DeepLog(self.model_cfg)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise ModelError(f"weights do not match the model config: {exc}") from None
        return model.to(device or torch.device("cpu")).eval()

    def template_state(self) -> Templates | None:
        """The template miner the training sessions were mined with, or None."""
        return _templates_of(self.templates)


AnyBundle = ModelBundle | DeepLogBundle


def _canonical(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata exactly as it reads back from JSON, so save and load hash the same thing.

    A JSON round trip turns tuples into lists, int keys into strings and unknown objects (numpy
    scalars, paths) into strings; hashing the in-memory dict instead would give another version.
    """
    result: dict[str, Any] = json.loads(json.dumps(meta, default=str))
    return result


def _content_version(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Raw bytes of any dtype (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()[:VERSION_CHARS]


def _check_consistent(bundle: AnyBundle) -> None:
    if isinstance(bundle, DeepLogBundle):
        if bundle.vocabulary.size != bundle.model_cfg.vocab_size:
            raise ModelError(f"vocabulary has {bundle.vocabulary.size} ids, the model {bundle.model_cfg.vocab_size}")
        return
    n = bundle.model_cfg.n_features
    if len(bundle.normaliser.mean) != n:
        raise ModelError(f"normaliser has {len(bundle.normaliser.mean)} features, the model {n}")
    if len(bundle.feature_names) != n:
        raise ModelError(f"{len(bundle.feature_names)} feature names for a model of {n} features")


def _meta_of(bundle: AnyBundle) -> dict[str, Any]:
    """The JSON fields of a bundle (without ``version``), in the layout of its kind."""
    meta: dict[str, Any]
    if isinstance(bundle, DeepLogBundle):
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": DEEPLOG_KIND,
            "model": bundle.model_cfg.to_dict(),
            "vocabulary": bundle.vocabulary.to_dict(),
            "nll_threshold": float(bundle.nll_threshold),
            "metrics": bundle.metrics,
            "training": bundle.training,
        }
    else:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": bundle.kind,
            "model": bundle.model_cfg.to_dict(),
            "normaliser": bundle.normaliser.to_dict(),
            "threshold": float(bundle.threshold),
            "feature_names": list(bundle.feature_names),
            "features": bundle.features,
            "metrics": bundle.metrics,
            "training": bundle.training,
        }
    # Only when set: a bundle without a state hashes (and reads) exactly as before the field existed.
    if bundle.templates is not None:
        meta["templates"] = bundle.templates
    return _canonical(meta)


def save_bundle(model_dir: str | Path, bundle: AnyBundle) -> Path:
    """Write the bundle (either kind) into ``model_dir`` and set ``bundle.version`` to its content hash.

    Example:
        >>> save_bundle("model", bundle)  # doctest: +SKIP
        PosixPath('model')
        >>> load_any_bundle("model").version == bundle.version  # doctest: +SKIP
        True

    Raises:
        ModelError: the weights do not fit the config, or (autoencoder) the normaliser or feature
            names have another number of features than the model, or (DeepLog) the vocabulary
            another size.
    """
    _check_consistent(bundle)
    bundle.build_model()  # refuse to write a bundle that could never be loaded
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.state_dict.items()}
    meta = _meta_of(bundle)
    version = _content_version(state, meta)
    meta["version"] = version
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p), metadata={"version": version}))
    atomic_write(directory / META, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    bundle.version = version
    if isinstance(bundle, DeepLogBundle):
        log.info("saved deeplog bundle %s (%d templates, top_g %d) to %s",
                 version, bundle.model_cfg.n_templates, bundle.top_g, directory)
    else:
        log.info("saved %s bundle %s (%d features, threshold %.5f) to %s",
                 bundle.kind, version, bundle.model_cfg.n_features, bundle.threshold, directory)
    return directory


def _read_verified(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``model.json`` and the weights, after every check that does not depend on the kind."""
    weights, meta_path = directory / WEIGHTS, directory / META
    missing = [p.name for p in (weights, meta_path) if not p.is_file()]
    if missing:
        raise ModelError(
            f"no complete model bundle in {directory}: missing {', '.join(missing)}; run `loganomaly train`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path} must hold a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{meta_path}: unsupported bundle format {meta.get('format_version')!r} "
            f"(this code reads format {FORMAT_VERSION}); retrain or upgrade loganomaly"
        )
    # Bundles written before the kind was checked always said lstm_autoencoder; a missing kind is refused too.
    if meta.get("kind") not in KINDS:
        raise ModelError(
            f"{meta_path}: unknown bundle kind {meta.get('kind')!r}; this code reads: {', '.join(KINDS)}"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            weights_version = (f.metadata() or {}).get("version")
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types on a corrupt file
        raise ModelError(f"{weights} cannot be read: {exc}") from None
    version = meta.get("version")
    if weights_version != version:
        raise ModelError(
            f"{directory}: {WEIGHTS} is version {weights_version}, {META} version {version}; "
            "the files come from different saves"
        )
    check = {k: v for k, v in meta.items() if k != "version"}
    if _content_version(state, check) != version:
        raise ModelError(f"{directory}: content does not match version {version}; a bundle file was modified")
    templates = meta.get("templates")
    if templates is not None and not isinstance(templates, dict):
        raise ModelError(f"{meta_path}: templates must be a JSON object or absent")
    return meta, state


def _window_model_from(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> ModelBundle:
    model_cfg = ClassifierConfig.from_dict(meta["model"]) if meta["kind"] == CLASSIFIER_KIND \
        else LSTMAutoencoderConfig.from_dict(meta["model"])
    return ModelBundle(
        model_cfg=model_cfg,
        state_dict=state,
        normaliser=Normaliser.from_dict(meta["normaliser"]),
        threshold=float(meta["threshold"]),
        feature_names=[str(name) for name in meta["feature_names"]],
        features=dict(meta["features"]),
        metrics=dict(meta.get("metrics") or {}),
        training=dict(meta.get("training") or {}),
        version=str(meta["version"]),
        templates=meta.get("templates"),
    )


def _deeplog_from(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> DeepLogBundle:
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


def load_any_bundle(model_dir: str | Path) -> AnyBundle:
    """Read a bundle of either kind written by :func:`save_bundle`; check ``.kind`` or ``isinstance``.

    Raises:
        ModelError: a file is missing or unreadable, the format version or kind is unknown, the
            files are from different saves or were edited (content hash mismatch), or the weights
            do not fit the model config.
    """
    directory = Path(model_dir)
    meta, state = _read_verified(directory)
    bundle: AnyBundle
    try:
        bundle = _deeplog_from(meta, state) if meta["kind"] == DEEPLOG_KIND else _window_model_from(meta, state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{directory / META} is incomplete or malformed: {exc!r}") from None
    _check_consistent(bundle)
    bundle.build_model()  # fail here, not in a Spark task, when weights do not fit the config
    log.info("loaded %s bundle %s from %s", bundle.kind, bundle.version, directory)
    return bundle


def load_bundle(model_dir: str | Path) -> ModelBundle:
    """Read a window-model bundle (autoencoder or classifier) written by :func:`save_bundle`.

    Raises:
        ModelError: as :func:`load_any_bundle`, or the bundle is of another kind (a DeepLog
            bundle is scored with ``model.kind=deeplog``).
    """
    bundle = load_any_bundle(model_dir)
    if not isinstance(bundle, ModelBundle):
        raise ModelError(
            f"{model_dir} holds a {bundle.kind} bundle, not an {KIND} or {CLASSIFIER_KIND} one; "
            "score it with model.kind=deeplog"
        )
    return bundle


def load_deeplog_bundle(model_dir: str | Path) -> DeepLogBundle:
    """Read a DeepLog bundle written by :func:`save_bundle`.

    Raises:
        ModelError: as :func:`load_any_bundle`, or the bundle is of another kind.
    """
    bundle = load_any_bundle(model_dir)
    if not isinstance(bundle, DeepLogBundle):
        raise ModelError(
            f"{model_dir} holds a {bundle.kind} bundle, not a {DEEPLOG_KIND} one; "
            "score it with model.kind=autoencoder or retrain with model.kind=deeplog"
        )
    return bundle


#: Worker-local cache of (bundle, model, device) by model version: lives as long as the Python worker,
#: so a model is materialised once per worker, not once per task or batch.
_WORKER_MODELS: dict[str, tuple[Any, Any, Any]] = {}


def worker_model(
    version: str, files: dict[str, bytes], loader: Callable[[str], AnyBundle]
) -> tuple[Any, Any, Any]:
    """(bundle, model on its device, device) of bundle ``files`` shipped as bytes to a worker.

    Args:
        version: the expected content version (a mismatch is a ModelError: wrong bytes shipped).
        files: bundle file name -> bytes (from a broadcast).
        loader: :func:`load_bundle`, :func:`load_deeplog_bundle` or :func:`load_any_bundle`.
    """
    if version not in _WORKER_MODELS:
        from loganomaly.runtime.device import pick_device

        directory = tempfile.mkdtemp(prefix=f"loganomaly-model-{version}-")
        for name, data in files.items():
            Path(directory, name).write_bytes(data)
        bundle = loader(directory)
        if bundle.version != version:
            raise ModelError(f"model bytes are version {bundle.version}, expected {version}")
        device = pick_device("auto")
        _WORKER_MODELS[version] = (bundle, bundle.build_model(device), device)
        log.info("worker %d loaded %s model %s on %s", os.getpid(), bundle.kind, version, device)
    return _WORKER_MODELS[version]
