"""Model bundles: ``model.safetensors`` (weights) + ``model.json`` (everything else), of any kind.

A bundle's ``kind`` (a field of ``model.json``) says which model it holds, and names the model kind
(:data:`loganomaly.registry.MODEL_KINDS`) that writes and reads its fields: ``lstm_autoencoder``
and ``lstm_classifier`` (:class:`loganomaly.models.window.ModelBundle`), ``deeplog``
(:class:`loganomaly.models.deeplog.DeepLogBundle`), or a kind of your own. This module holds what
every kind shares: the format version, the content hash, atomic writes, verification on load.

Every kind may carry ``templates``: the template-miner state (``Templates.to_dict()``) the training
data were mined with, so a bundle alone says which template ids its inputs must use. The key is
written only when a state is set, so a bundle without one is byte-for-byte what earlier releases
wrote and keeps its version.

Loading never unpickles: weights are safetensors, the rest is JSON. An unknown kind or format
version is refused with a :class:`~loganomaly.errors.ModelError`, never guessed.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loganomaly.config import Config
from loganomaly.errors import ModelError
from loganomaly.ingest.templates.miner import Templates
from loganomaly.ingest.templates.store import load_state
from loganomaly.registry import MODEL_KINDS
from loganomaly.runtime.device import pick_device
from loganomaly.runtime.files import atomic_write

if TYPE_CHECKING:
    from loganomaly.lake.tables import Lake
    from loganomaly.models.kind import Bundle, ModelKind

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FILES", "FORMAT_VERSION", "META", "WEIGHTS", "kind_of", "load_bundle", "save_bundle",
           "training_templates", "worker_model"]

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
#: The files of a bundle, as shipped to executors.
BUNDLE_FILES = (META, WEIGHTS)
VERSION_CHARS = 12


def kind_of(bundle_kind: str) -> ModelKind:
    """The registered model kind that writes bundles of ``bundle_kind``.

    Raises:
        ModelError: no registered kind writes it.
    """
    for _, kind in MODEL_KINDS.items():
        if kind.bundle_kind == bundle_kind:
            return kind  # type: ignore[no-any-return]
    known = [k.bundle_kind for _, k in MODEL_KINDS.items()]
    raise ModelError(f"unknown bundle kind {bundle_kind!r}; this code reads: {', '.join(known)}")


def build_network(model_cfg: Any, state_dict: dict[str, torch.Tensor], device: torch.device | None = None
                  ) -> torch.nn.Module:
    """``model_cfg.build()`` with ``state_dict`` loaded, in eval mode, on ``device`` (CPU by default).

    Raises:
        ModelError: the weights do not fit the config.
    """
    model: torch.nn.Module = model_cfg.build()
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ModelError(f"weights do not match the model config: {exc}") from None
    return model.to(device or torch.device("cpu")).eval()


def templates_of(data: dict[str, Any] | None) -> Templates | None:
    """The miner state a bundle carries, rebuilt."""
    if data is None:
        return None
    return Templates.from_dict(data)


def training_templates(cfg: Config, lake: Lake) -> dict[str, Any] | None:
    """The template-miner state the training data were mined with, for the bundle; None when disabled.

    The current state of the lake is the one featurize used (a refit makes a new current state,
    and its template ids differ), so a bundle that carries it can always be matched to its inputs.
    """
    if not cfg.templates.enabled:
        return None
    state = load_state(lake)
    if state is None:
        log.info("no template-miner state in %s; the bundle carries none", lake.root)
        return None
    return state.to_dict()


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


def _meta_of(bundle: Bundle) -> dict[str, Any]:
    """The JSON fields of a bundle (without ``version``), in the layout of its kind."""
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, **kind_of(bundle.kind).bundle_meta(bundle)}
    # Only when set: a bundle without a state hashes (and reads) exactly as before the field existed.
    if bundle.templates is not None:
        meta["templates"] = bundle.templates
    return _canonical(meta)


def save_bundle(model_dir: str | Path, bundle: Bundle) -> Path:
    """Write the bundle (either kind) into ``model_dir`` and set ``bundle.version`` to its content hash.

    Example:
        >>> save_bundle("model", bundle)  # doctest: +SKIP
        PosixPath('model')
        >>> load_bundle("model").version == bundle.version  # doctest: +SKIP
        True

    Raises:
        ModelError: the weights do not fit the config, or (autoencoder) the normaliser or feature
            names have another number of features than the model, or (DeepLog) the vocabulary
            another size.
    """
    kind_of(bundle.kind).check_bundle(bundle)
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
    log.info("saved %s bundle %s (threshold %.5g) to %s", bundle.kind, version, bundle.threshold, directory)
    return directory


def _read_verified(directory: Path, kind: ModelKind | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
    if kind is None:
        try:
            kind_of(str(meta.get("kind")))
        except ModelError as exc:
            raise ModelError(f"{meta_path}: {exc}") from None
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


def load_bundle(model_dir: str | Path, kind: ModelKind | None = None) -> Bundle:
    """Read a bundle of any registered kind written by :func:`save_bundle`; its kind is ``bundle.kind``.

    ``kind`` reads it with that kind instead of the one registered for its ``kind`` field (a Spark
    worker gets the kind object from the driver, where a plug-in kind may have been registered).

    Raises:
        ModelError: a file is missing or unreadable, the format version or kind is unknown, the
            files are from different saves or were edited (content hash mismatch), or the weights
            do not fit the model config.
    """
    directory = Path(model_dir)
    meta, state = _read_verified(directory, kind)
    if kind is None:
        kind = kind_of(str(meta.get("kind")))
    elif kind.bundle_kind != meta.get("kind"):
        raise ModelError(f"{directory} holds a {meta.get('kind')} bundle, not a {kind.bundle_kind} one")
    try:
        bundle = kind.bundle_from(meta, state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{directory / META} is incomplete or malformed: {exc!r}") from None
    kind.check_bundle(bundle)
    bundle.build_model()  # fail here, not in a Spark task, when weights do not fit the config
    log.info("loaded %s bundle %s from %s", bundle.kind, bundle.version, directory)
    return bundle


#: Worker-local cache of (bundle, model, device) by model version: lives as long as the Python worker,
#: so a model is materialised once per worker, not once per task or batch.
_WORKER_MODELS: dict[str, tuple[Any, Any, Any]] = {}


def worker_model(version: str, files: dict[str, bytes], kind: ModelKind | None = None,
                 threads: int | None = None) -> tuple[Any, Any, Any]:
    """(bundle, model on its device, device) of bundle ``files`` shipped as bytes to a worker.

    The model goes on CUDA when the worker has a GPU, else the CPU.

    Args:
        version: the expected content version (a mismatch is a ModelError: wrong bytes shipped).
        files: bundle file name -> bytes (from a broadcast).
        threads: torch intra-op threads for this worker process (the task's cores); set when it
            differs from the current setting, so once per worker in practice.
    """
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.info("worker %d: torch uses %d threads", os.getpid(), threads)
    if version not in _WORKER_MODELS:
        # The files only live while they are read: a long-lived executor loads a model per
        # version and worker, and directories left behind would pile up in its temp folder.
        with tempfile.TemporaryDirectory(prefix=f"loganomaly-model-{version}-") as directory:
            for name, data in files.items():
                Path(directory, name).write_bytes(data)
            bundle = load_bundle(directory, kind)
        if bundle.version != version:
            raise ModelError(f"model bytes are version {bundle.version}, expected {version}")
        device = pick_device("auto")
        _WORKER_MODELS[version] = (bundle, bundle.build_model(device), device)
        log.info("worker %d loaded %s model %s on %s", os.getpid(), bundle.kind, version, device)
    return _WORKER_MODELS[version]
