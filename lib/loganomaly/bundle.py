"""The model bundle: ``model.safetensors`` (weights) + ``model.json`` (everything else).

Everything scoring needs travels together: model config, normaliser, feature names and window
spec, threshold, metrics, and the training data version. Loading never unpickles: weights are
safetensors, the rest is JSON.

The bundle's ``version`` is a short hash of its whole content (weights and every JSON field), so
identical bundles share a version, scores can be traced to the exact model, and an edit to either
file (a hand-tuned threshold, swapped weights) is detected at load. Files are written to temporary
names and renamed into place; a crash between the two renames leaves files whose versions
disagree, which :func:`load_bundle` refuses, so a half-written bundle never loads.
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
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loganomaly.errors import ModelError
from loganomaly.model import LSTMAutoencoder, LSTMAutoencoderConfig
from loganomaly.normalize import Normaliser

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "lstm_autoencoder"
WEIGHTS = "model.safetensors"
META = "model.json"
#: Hex digits of the content hash kept as the version: short enough to read in a table.
VERSION_CHARS = 12


@dataclass
class ModelBundle:
    """A trained model and everything needed to score with it.

    Attributes:
        model_cfg: architecture, to rebuild the network.
        state_dict: its weights.
        normaliser: per-feature statistics of the training windows.
        threshold: scores above it are anomalies.
        feature_names: the F feature names, in model order.
        features: the feature spec the windows were built with (step_seconds, window_steps, ...).
        metrics: validation metrics (loss, score quantiles, typical per-feature error).
        training: provenance (data version, run id, history, config).
        version: content hash, set by :func:`save_bundle` and checked by :func:`load_bundle`.
    """

    model_cfg: LSTMAutoencoderConfig
    state_dict: dict[str, torch.Tensor]
    normaliser: Normaliser
    threshold: float
    feature_names: list[str]
    features: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    def build_model(self, device: torch.device | None = None) -> LSTMAutoencoder:
        """The model with its weights, in eval mode, on ``device`` (CPU by default)."""
        model = LSTMAutoencoder(self.model_cfg)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise ModelError(f"weights do not match the model config: {exc}") from None
        return model.to(device or torch.device("cpu")).eval()


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


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a unique temp file in the same directory, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_consistent(bundle: ModelBundle) -> None:
    n = bundle.model_cfg.n_features
    if len(bundle.normaliser.mean) != n:
        raise ModelError(f"normaliser has {len(bundle.normaliser.mean)} features, the model {n}")
    if len(bundle.feature_names) != n:
        raise ModelError(f"{len(bundle.feature_names)} feature names for a model of {n} features")


def save_bundle(model_dir: str | Path, bundle: ModelBundle) -> Path:
    """Write the bundle into ``model_dir`` and set ``bundle.version`` to its content hash.

    Example:
        >>> save_bundle("model", bundle)  # doctest: +SKIP
        PosixPath('model')
        >>> load_bundle("model").version == bundle.version  # doctest: +SKIP
        True

    Raises:
        ModelError: the weights do not fit the config, or the normaliser or feature names have
            another number of features than the model.
    """
    _check_consistent(bundle)
    bundle.build_model()  # refuse to write a bundle that could never be loaded
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.state_dict.items()}
    meta = _canonical(
        {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "model": bundle.model_cfg.to_dict(),
            "normaliser": bundle.normaliser.to_dict(),
            "threshold": float(bundle.threshold),
            "feature_names": list(bundle.feature_names),
            "features": bundle.features,
            "metrics": bundle.metrics,
            "training": bundle.training,
        }
    )
    version = _content_version(state, meta)
    meta["version"] = version
    _atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p), metadata={"version": version}))
    _atomic_write(directory / META, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    bundle.version = version
    log.info("saved model bundle %s (%d features, threshold %.5f) to %s",
             version, bundle.model_cfg.n_features, bundle.threshold, directory)
    return directory


def load_bundle(model_dir: str | Path) -> ModelBundle:
    """Read a bundle written by :func:`save_bundle`, checking that its files belong together.

    Raises:
        ModelError: a file is missing or unreadable, the format version is unknown, the files are
            from different saves or were edited (content hash mismatch), or the weights do not fit
            the model config.
    """
    directory = Path(model_dir)
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
    try:
        bundle = ModelBundle(
            model_cfg=LSTMAutoencoderConfig.from_dict(meta["model"]),
            state_dict=state,
            normaliser=Normaliser.from_dict(meta["normaliser"]),
            threshold=float(meta["threshold"]),
            feature_names=[str(name) for name in meta["feature_names"]],
            features=dict(meta["features"]),
            metrics=dict(meta.get("metrics") or {}),
            training=dict(meta.get("training") or {}),
            version=str(version),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta_path} is incomplete or malformed: {exc!r}") from None
    _check_consistent(bundle)
    bundle.build_model()  # fail here, not in a Spark task, when weights do not fit the config
    log.info("loaded model bundle %s from %s", bundle.version, directory)
    return bundle
