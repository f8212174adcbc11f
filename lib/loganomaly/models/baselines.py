"""Classical anomaly detectors on the LSTMs' windows, and one evaluation for every detector.

The baselines answer "does the LSTM earn its cost?": Isolation Forest, One-Class SVM and PCA
reconstruction error (scikit-learn) see exactly the windows the LSTMs see, flattened from
``[N, T, F]`` to ``[N, T * F]`` and standardised per column with statistics of the training
windows only (validation and test data never leak into the scaling). All share one interface:
``fit(train_x)``, ``score(x)`` (higher = more anomalous), ``calibrate(val_x, quantile)`` and
``predict(x)``.

Persistence never pickles. :class:`PCABaseline` is a mean, a components matrix and the scaler, so
it saves to JSON and scores with plain NumPy after loading. An Isolation Forest (hundreds of
trees) or a fitted SVM (support vectors, kernel settings, dual coefficients) has no such small,
stable parameter form outside scikit-learn's pickles, so those two are refit on every benchmark
run and cannot be saved; their ``to_dict`` raises :class:`~loganomaly.errors.ModelError`. Fitting
them takes seconds at benchmark sizes, and they are seeded, so a refit is reproducible.

:func:`evaluate` turns scores and labels into precision, recall, F1, ROC-AUC, PR-AUC and the
best-F1 threshold for any detector (these baselines, DeepLog's ``max_nll``, the autoencoder's
reconstruction error), so all are compared with the same code.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from loganomaly.errors import ConfigError, ModelError
from loganomaly.models.normaliser import STD_FLOOR, check_std_floor

log = logging.getLogger(__name__)

#: Names :func:`make_baseline` accepts.
BASELINES = ("isolation_forest", "one_class_svm", "pca")
#: Format of :meth:`PCABaseline.to_dict`; bumped when its fields change meaning.
PCA_FORMAT = 1


def flatten_windows(x: np.ndarray) -> np.ndarray:
    """Windows ``[N, T, F]`` as rows ``[N, T * F]`` (float64); 2-d input passes through.

    Raises:
        ModelError: not 2- or 3-d, or holding NaN or infinity.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.reshape(len(arr), -1)
    elif arr.ndim != 2:
        raise ModelError(f"windows must have shape [N, T, F] or [N, D], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ModelError("windows contain NaN or infinite values")
    return arr


class Standardiser:
    """Per-column mean and standard deviation of the flattened training windows.

    Per column, not per feature: step t of feature f is its own column, as the detectors see it.
    The std is floored like :class:`loganomaly.models.normaliser.Normaliser`'s, so a column constant in
    training does not turn a small change into an infinite z-score.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1 or not len(self.mean):
            raise ModelError(f"standardiser needs equal 1-d mean and std, got {self.mean.shape} and {self.std.shape}")
        if not np.isfinite(self.mean).all() or not np.isfinite(self.std).all() or (self.std <= 0).any():
            raise ModelError("standardiser mean must be finite and std finite and > 0")

    @classmethod
    def fit(cls, rows: np.ndarray, std_floor: float = STD_FLOOR) -> Standardiser:
        """Statistics of ``rows[N, D]``; ``std_floor`` as the LSTM's normaliser (``train.std_floor``)."""
        if len(rows) == 0:
            raise ModelError("cannot fit a standardiser on zero windows")
        check_std_floor(std_floor)
        return cls(rows.mean(axis=0), np.maximum(rows.std(axis=0), std_floor))

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Z-scores of ``rows[N, D]``."""
        if rows.shape[1:] != self.mean.shape:
            raise ModelError(f"windows have {rows.shape[1:]} columns after flattening; the detector was "
                             f"fitted on {self.mean.shape}")
        result: np.ndarray = (rows - self.mean) / self.std
        return result


class Baseline(ABC):
    """Common interface: fit on normal training windows, score (higher = more anomalous), calibrate.

    Attributes:
        name: the :data:`BASELINES` name.
        threshold: set by :meth:`calibrate`; ``None`` before.
        standardiser: set by :meth:`fit`.
    """

    name: str = ""
    #: Whether :meth:`to_dict` works; False for detectors that are refit per run.
    persistable: bool = False

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.standardiser: Standardiser | None = None

    def fit(self, train_x: np.ndarray, std_floor: float = STD_FLOOR) -> Baseline:
        """Fit the scaler and the detector on (normal) training windows; returns ``self``.

        ``std_floor``: the least std of a column, the same as the LSTM's normaliser uses, so a
        comparison on the same windows also scales them alike.
        """
        rows = flatten_windows(train_x)
        if len(rows) < 2:
            raise ModelError(f"{self.name} needs at least 2 training windows, got {len(rows)}")
        self.standardiser = Standardiser.fit(rows, std_floor)
        self._fit(self.standardiser.transform(rows))
        log.info("%s fitted on %d windows of %d columns", self.name, rows.shape[0], rows.shape[1])
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """Anomaly scores ``[N]`` (float64), higher = more anomalous."""
        if self.standardiser is None:
            raise ModelError(f"{self.name} is not fitted; call fit() first")
        rows = flatten_windows(x)
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._score(self.standardiser.transform(rows)), dtype=np.float64)

    def calibrate(self, val_x: np.ndarray, quantile: float) -> float:
        """Set and return the threshold: the ``quantile`` of validation scores (normal windows).

        About ``1 - quantile`` of normal windows like the validation ones will score above it.
        """
        if not 0.0 < quantile < 1.0:
            raise ModelError(f"threshold quantile must be in (0, 1), got {quantile}")
        scores = self.score(val_x)
        if scores.size == 0:
            raise ModelError("no validation windows to calibrate a threshold on")
        self.threshold = float(np.quantile(scores, quantile))
        log.info("%s threshold %.6g at quantile %g of %d validation windows", self.name, self.threshold,
                 quantile, scores.size)
        return self.threshold

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Boolean anomaly flags: score above the calibrated threshold."""
        if self.threshold is None:
            raise ModelError(f"{self.name} has no threshold; call calibrate() first")
        flags: np.ndarray = self.score(x) > self.threshold
        return flags

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters; only for :attr:`persistable` detectors."""
        raise ModelError(f"{self.name} cannot be saved without pickle; refit it for each run")

    @abstractmethod
    def _fit(self, z: np.ndarray) -> None: ...

    @abstractmethod
    def _score(self, z: np.ndarray) -> np.ndarray: ...


class IsolationForestBaseline(Baseline):
    """Isolation Forest: anomalies are isolated by fewer random splits. Not persistable (refit per run).

    Args:
        n_estimators: trees.
        max_samples: windows per tree (``"auto"``: min(256, N)).
        seed: ``random_state``; the same seed and data give the same scores.
    """

    name = "isolation_forest"

    def __init__(self, n_estimators: int = 200, max_samples: int | float | str = "auto", seed: int = 0) -> None:
        super().__init__()
        self.model = IsolationForest(n_estimators=n_estimators, max_samples=max_samples, random_state=seed)

    def _fit(self, z: np.ndarray) -> None:
        self.model.fit(z)

    def _score(self, z: np.ndarray) -> np.ndarray:
        # score_samples is higher for normal points; negate so higher = more anomalous.
        result: np.ndarray = -self.model.score_samples(z)
        return result


class OneClassSVMBaseline(Baseline):
    """One-Class SVM with an RBF kernel. Not persistable (refit per run).

    Fitting is quadratic or worse in the number of windows, so at most ``max_train`` windows
    (a seeded random subset) are used.

    Args:
        nu: upper bound on the fraction of training windows treated as outliers.
        gamma: RBF kernel width (``"scale"``: 1 / (D * var)).
        max_train: cap on training windows.
        seed: seeds the subset.
    """

    name = "one_class_svm"

    def __init__(self, nu: float = 0.05, gamma: float | str = "scale", max_train: int = 5000, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < nu <= 1.0:
            raise ModelError(f"nu must be in (0, 1], got {nu}")
        if max_train < 2:
            raise ModelError(f"max_train must be >= 2, got {max_train}")
        self.model = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma)
        self.max_train = max_train
        self.seed = seed

    def _fit(self, z: np.ndarray) -> None:
        if len(z) > self.max_train:
            log.info("one_class_svm: fitting on %d of %d windows", self.max_train, len(z))
            z = z[np.random.default_rng(self.seed).choice(len(z), self.max_train, replace=False)]
        self.model.fit(z)

    def _score(self, z: np.ndarray) -> np.ndarray:
        result: np.ndarray = -self.model.score_samples(z)
        return result


class PCABaseline(Baseline):
    """PCA reconstruction error: normal windows lie near a low-dimensional subspace, anomalies off it.

    The score is the mean squared distance between a standardised window and its projection on
    the principal subspace. Fitted with scikit-learn, scored with NumPy from ``mean`` and
    ``components`` alone, so a saved and reloaded detector scores identically.

    Args:
        n_components: components kept: an int, or a fraction of variance to explain in (0, 1).
        seed: ``random_state`` of the SVD.
    """

    name = "pca"
    persistable = True

    def __init__(self, n_components: int | float = 0.95, seed: int = 0) -> None:
        super().__init__()
        if isinstance(n_components, bool) or not (
            (isinstance(n_components, int) and n_components >= 1)
            or (isinstance(n_components, float) and 0.0 < n_components < 1.0)
        ):
            raise ModelError(f"n_components must be an int >= 1 or a fraction in (0, 1), got {n_components!r}")
        self.n_components = n_components
        self.seed = seed
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def _fit(self, z: np.ndarray) -> None:
        k = self.n_components
        if isinstance(k, int) and k > min(z.shape):
            raise ModelError(f"pca: n_components {k} exceeds min(windows, columns) = {min(z.shape)}")
        pca = PCA(n_components=k, svd_solver="full", random_state=self.seed).fit(z)
        self.mean = np.asarray(pca.mean_, dtype=np.float64)
        self.components = np.asarray(pca.components_, dtype=np.float64)
        log.info("pca: %d components explain %.3f of the variance", len(self.components),
                 float(np.sum(pca.explained_variance_ratio_)))

    def _score(self, z: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.components is not None  # set with the standardiser
        centred = z - self.mean
        residual = centred - (centred @ self.components.T) @ self.components
        result: np.ndarray = (residual**2).mean(axis=1)
        return result

    def to_dict(self) -> dict[str, Any]:
        """Everything scoring needs, as JSON-ready lists (floats round-trip exactly through JSON)."""
        if self.standardiser is None or self.mean is None or self.components is None:
            raise ModelError("pca is not fitted; nothing to save")
        return {
            "format": PCA_FORMAT,
            "kind": self.name,
            "n_components": self.n_components,
            "seed": self.seed,
            "scaler_mean": self.standardiser.mean.tolist(),
            "scaler_std": self.standardiser.std.tolist(),
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PCABaseline:
        """Rebuild from :meth:`to_dict`; unknown keys or another format are refused."""
        keys = {"format", "kind", "n_components", "seed", "scaler_mean", "scaler_std", "mean", "components",
                "threshold"}
        if not isinstance(data, dict):
            raise ModelError(f"pca parameters must be a mapping, got {type(data).__name__}")
        unknown, missing = sorted(set(data) - keys), sorted(keys - set(data))
        if unknown or missing:
            raise ModelError(f"pca parameters: unknown keys {unknown}, missing keys {missing}; "
                             f"valid keys: {', '.join(sorted(keys))}")
        if data["format"] != PCA_FORMAT or data["kind"] != cls.name:
            raise ModelError(f"not a format {PCA_FORMAT} pca detector: format {data['format']!r}, "
                             f"kind {data['kind']!r}")
        detector = cls(data["n_components"], int(data["seed"]))
        detector.standardiser = Standardiser(np.asarray(data["scaler_mean"]), np.asarray(data["scaler_std"]))
        detector.mean = np.asarray(data["mean"], dtype=np.float64)
        detector.components = np.asarray(data["components"], dtype=np.float64)
        d = len(detector.standardiser.mean)
        if detector.mean.shape != (d,) or detector.components.ndim != 2 or detector.components.shape[1] != d:
            raise ModelError(f"pca parameters do not fit together: {d} columns, mean {detector.mean.shape}, "
                             f"components {detector.components.shape}")
        detector.threshold = None if data["threshold"] is None else float(data["threshold"])
        return detector

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""
        target = Path(path)
        data = self.to_dict()
        target.write_text(json.dumps(data) + "\n", encoding="utf-8")
        log.info("saved pca detector (%d components) to %s", len(data["components"]), target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> PCABaseline:
        """Read a detector written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"cannot read pca detector {path}: {exc}") from None
        return cls.from_dict(data)


def make_baseline(name: str, **params: Any) -> Baseline:
    """A baseline by name (``isolation_forest``, ``one_class_svm``, ``pca``) with its parameters.

    Raises:
        ConfigError: an unknown name (the error lists the valid ones) or parameter.
    """
    classes: dict[str, type[Baseline]] = {
        "isolation_forest": IsolationForestBaseline,
        "one_class_svm": OneClassSVMBaseline,
        "pca": PCABaseline,
    }
    if name not in classes:
        raise ConfigError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINES)}")
    try:
        return classes[name](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for baseline {name!r}: {exc}") from None
