"""Per-feature standardisation fitted on training windows only, stored with the model.

Features differ by orders of magnitude (connection counts vs. distinct ports vs. log bytes); without
scaling, the reconstruction error would be dominated by the largest feature. Statistics come from
the training windows only, so validation and scoring data never leak into the model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from loganomaly.errors import ModelError
from loganomaly.runtime.collective import Collective

log = logging.getLogger(__name__)

#: Floor of the standard deviation: a feature constant in training (e.g. zero errors all day) must
#: not turn its first non-zero value into an error of 1e12. With the floor, a jump of 1 unit in a
#: previously constant feature reads as 100 standard deviations: loud, but finite.
STD_FLOOR = 1e-2


def check_std_floor(std_floor: float) -> None:
    """Refuse a floor that is not a positive finite number (``train.std_floor``).

    A higher floor than :data:`STD_FLOOR` tames features that are rare rather than constant: a
    category count (``cat:<field>=<value>``) whose value one training window in a thousand holds
    has a std near 0.02, so that one normal value reads as ~35 standard deviations and its squared
    error alone outweighs every other feature of the window. Raising the floor to 0.1 caps it
    near 7 while leaving features whose spread is above the floor untouched.

    Raises:
        ModelError: ``std_floor`` is not a finite number > 0.
    """
    if isinstance(std_floor, bool) or not isinstance(std_floor, (int, float)) or not np.isfinite(std_floor) \
            or std_floor <= 0:
        raise ModelError(f"the normaliser's std floor must be a finite number > 0, got {std_floor!r}")


@dataclass
class Normaliser:
    """Per-feature mean and standard deviation; ``transform`` maps windows to z-scores.

    Attributes:
        mean: per-feature mean, length F.
        std: per-feature standard deviation (floored at :data:`STD_FLOOR`), length F.
        ignored: features the model does not see. Count signals read them from the raw
            windows instead (``model.network_indicators``): counts that are 0 in almost every
            normal window would otherwise dominate the error of any window where they are 1 or 2
            (mean and std still describe them, for explanations).
        dropped: whether ``transform`` leaves the ignored features out of its output (the
            model's input is then ``F - len(ignored)`` wide: :attr:`width`), or, in bundles
            written before 2026-12-05, sets them to 0 (their mean). Zeroed columns carried no
            information, but they were still inputs and outputs of the network: each one more
            changed how its weights were drawn, so adding an indicator moved every score.
    """

    mean: list[float]
    std: list[float]
    ignored: list[int] = field(default_factory=list)
    dropped: bool = False

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ModelError(f"normaliser needs equal, non-empty mean and std, got {len(self.mean)} and {len(self.std)}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or min(self.std) <= 0:
            raise ModelError("normaliser mean must be finite and std finite and > 0")
        if any(not isinstance(i, int) or not 0 <= i < len(self.mean) for i in self.ignored) \
                or len(set(self.ignored)) != len(self.ignored):
            raise ModelError(f"normaliser's ignored features {self.ignored} are not distinct columns of {len(self.mean)}")
        if not isinstance(self.dropped, bool):
            raise ModelError(f"normaliser's dropped must be true or false, got {self.dropped!r}")
        if self.dropped and len(self.ignored) >= len(self.mean):
            raise ModelError(f"normaliser drops all {len(self.mean)} features")

    def ignoring(self, columns: Sequence[int]) -> Normaliser:
        """The same statistics with ``columns`` ignored and left out of the model's input."""
        return dataclasses.replace(self, ignored=sorted(int(c) for c in columns), dropped=bool(len(columns)))

    def same_inputs(self, other: Normaliser) -> bool:
        """Whether ``other`` leaves out the same columns the same way (peer groups' normalisers
        must: their outputs fill one model input)."""
        return (self.ignored, self.dropped) == (other.ignored, other.dropped)

    @property
    def width(self) -> int:
        """Features per step of :meth:`transform`'s output: the model's input width."""
        return len(self.mean) - len(self.ignored) if self.dropped else len(self.mean)

    def kept(self) -> np.ndarray:
        """The feature columns :meth:`transform` outputs, in order."""
        if not self.dropped:
            return np.arange(len(self.mean))
        return np.setdiff1d(np.arange(len(self.mean)), self.ignored)

    def widen(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``values[..., width]`` (per model input, e.g. reconstruction errors) back at their
        feature columns ``[..., F]``, ``fill`` in the dropped ones; unchanged when none is dropped."""
        if not self.dropped or not self.ignored:
            return values
        out = np.full((*values.shape[:-1], len(self.mean)), fill, dtype=values.dtype)
        out[..., self.kept()] = values
        return out

    @classmethod
    def fit(cls, x: np.ndarray, std_floor: float = STD_FLOOR) -> Normaliser:
        """Mean and std per feature over windows and steps of ``x[N, T, F]``.

        Args:
            x: the training windows.
            std_floor: the least std a feature gets (``train.std_floor``, see :func:`check_std_floor`).

        Raises:
            ModelError: ``x`` is not a non-empty 3-d array, or holds NaN or infinity (which would
                poison every statistic silently), or ``std_floor`` is not a positive number.
        """
        check_std_floor(std_floor)
        if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
            raise ModelError(f"cannot fit a normaliser on an array of shape {x.shape}; expected [N, T, F]")
        flat = x.reshape(-1, x.shape[2]).astype(np.float64)
        if not np.isfinite(flat).all():
            raise ModelError("cannot fit a normaliser: the windows contain NaN or infinite values")
        std = flat.std(axis=0)
        floored = int((std < std_floor).sum())
        if floored:
            log.info("normaliser: %d of %d features below the std floor in training; std floored at %g",
                     floored, len(std), std_floor)
        return cls(flat.mean(axis=0).tolist(), np.maximum(std, std_floor).tolist())

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise ``x[..., F]`` feature-wise; float32, ready for the model."""
        if x.shape[-1] != len(self.mean):
            raise ModelError(f"windows have {x.shape[-1]} features, the normaliser {len(self.mean)}")
        # One float32 pass writing a fresh array, then one in place: no float64 copy and no cast
        # back (a third of the time of doing it in float64 on a scoring batch). The model runs in
        # float32 anyway; the values differ from float64 arithmetic by a float32 rounding or two.
        mean, std = np.asarray(self.mean, dtype=np.float32), np.asarray(self.std, dtype=np.float32)
        if self.dropped and self.ignored:
            kept = self.kept()
            x, mean, std = x[..., kept], mean[kept], std[kept]
        out = np.subtract(x, mean, dtype=np.float32)
        out /= std
        if self.ignored and not self.dropped:
            out[..., self.ignored] = 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (``ignored`` and ``dropped`` only when set: older bundles keep their
        bytes and versions)."""
        out: dict[str, Any] = {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}
        if self.ignored:
            out["ignored"] = [int(i) for i in self.ignored]
        if self.dropped:
            out["dropped"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normaliser:
        """Rebuild from :meth:`to_dict`; ModelError on missing or malformed values."""
        try:
            unknown = sorted(set(data) - {"mean", "std", "ignored", "dropped"})
            if unknown:
                raise ModelError(f"unknown normaliser keys {unknown}; valid keys: mean, std, ignored, dropped")
            ignored = data.get("ignored", [])
            if not isinstance(ignored, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ignored):
                raise ModelError(f"normaliser's ignored must be a list of column numbers, got {ignored!r}")
            return cls([float(v) for v in data["mean"]], [float(v) for v in data["std"]], list(ignored),
                       data.get("dropped", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid normaliser: {exc!r}") from None


#: Rows per float64 chunk in :func:`fit_normaliser` (a few MiB).
_CHUNK_ROWS = 1 << 15


def fit_normaliser(x: np.ndarray, comm: Collective, std_floor: float = STD_FLOOR) -> Normaliser:
    """Per-feature mean and std of all ranks' windows, as :meth:`Normaliser.fit` on their union would give.

    Each rank sends (count, mean, sum of squared deviations) per feature; every rank combines them
    in rank order (Chan et al.), so all ranks hold the identical normaliser without any rank
    seeing another's windows. ``std_floor`` as in :meth:`Normaliser.fit`.

    Raises:
        ModelError: a rank's windows hold NaN or infinity (every rank raises together), or
            ``std_floor`` is not a positive number.
    """
    check_std_floor(std_floor)
    f = x.shape[2]
    # float64 sums over the float32 windows in chunks: no float64 copy of the whole shard (which
    # cost about as much as reading it), same statistics.
    flat = x.reshape(-1, f)
    bad = 0.0 if np.isfinite(flat).all() else 1.0
    n = float(len(flat))
    mean = flat.mean(axis=0, dtype=np.float64) if n else np.zeros(f)
    m2 = np.zeros(f)
    for start in range(0, len(flat), _CHUNK_ROWS):
        deviation = flat[start : start + _CHUNK_ROWS].astype(np.float64)
        deviation -= mean
        m2 += np.einsum("ij,ij->j", deviation, deviation)
    local = torch.from_numpy(np.concatenate([[n, bad], mean, m2]))
    parts = comm.gather(local).numpy()
    if parts[:, 1].any():
        raise ModelError("cannot fit a normaliser: the windows contain NaN or infinite values")
    total, mu, acc = 0.0, np.zeros(f), np.zeros(f)
    for row in parts:
        nb, mb, m2b = row[0], row[2 : 2 + f], row[2 + f :]
        if nb == 0:
            continue
        delta = mb - mu
        combined = total + nb
        mu = mu + delta * nb / combined
        acc = acc + m2b + delta**2 * total * nb / combined
        total = combined
    if total == 0:
        raise ModelError("cannot fit a normaliser on zero windows")
    std = np.sqrt(acc / total)
    floored = int((std < std_floor).sum())
    if floored and comm.rank == 0:
        log.info("normaliser: %d of %d features below the std floor in training; std floored at %g",
                 floored, f, std_floor)
    return Normaliser(mu.tolist(), np.maximum(std, std_floor).tolist())


def group_index(x: np.ndarray, columns: list[int]) -> np.ndarray:
    """Which peer group each window ``x[N, T, F]`` belongs to (index into ``columns``), -1 for none.

    The group is the one-hot feature set on the window's busy steps; empty steps (zeros) carry
    no group, so the maximum over steps reads it.
    """
    if not columns or len(x) == 0:
        return np.full(len(x), -1, dtype=np.int64)
    hot = np.asarray(x)[:, :, columns].max(axis=1)
    idx = hot.argmax(axis=1)
    return np.where(hot[np.arange(len(x)), idx] > 0.5, idx, -1).astype(np.int64)


@dataclass
class PeerGroups:
    """Per peer group normaliser and threshold (the alert budget), stored with the model.

    A window of a group with its own normaliser is standardised with it (the group's normal, not
    the whole training set's); a group with too few training windows, or one never seen in
    training, uses the global normaliser. Likewise the threshold: calibrated per group on its
    validation windows at the alert budget, else the global one.

    Attributes:
        names: the group names, in feature order.
        columns: feature index of each group's one-hot feature.
        normalisers: the groups with their own normaliser.
        thresholds: the groups with their own threshold.
        budget: share of benign validation windows allowed to alert, per group.
        min_history: earlier busy steps an entity needs to be judged by its own baseline
            (``features.baseline_min_steps`` of the training config), for explanations.
    """

    names: list[str]
    columns: list[int]
    normalisers: dict[str, Normaliser]
    thresholds: dict[str, float]
    budget: float
    min_history: int

    def __post_init__(self) -> None:
        if len(self.names) != len(self.columns):
            raise ModelError(f"peer groups: {len(self.names)} names for {len(self.columns)} columns")
        unknown = sorted((set(self.normalisers) | set(self.thresholds)) - set(self.names))
        if unknown:
            raise ModelError(f"peer groups: statistics for unknown groups {unknown}; groups: {self.names}")

    def groups_of(self, x: np.ndarray) -> np.ndarray:
        """Group index of each window (-1: none)."""
        return group_index(x, self.columns)

    def transform(self, x: np.ndarray, fallback: Normaliser, groups: np.ndarray | None = None) -> np.ndarray:
        """Standardise each window with its group's normaliser, else ``fallback``."""
        out = fallback.transform(x)
        if not self.normalisers or len(x) == 0:
            return out
        groups = self.groups_of(x) if groups is None else groups
        for gi, name in enumerate(self.names):
            own = self.normalisers.get(name)
            mask = groups == gi
            if own is not None and not own.same_inputs(fallback):
                raise ModelError(f"peer group {name}'s normaliser leaves out other features than the global one")
            if own is not None and mask.any():
                out[mask] = own.transform(x[mask])
        return out

    def thresholds_of(self, groups: np.ndarray, fallback: float) -> np.ndarray:
        """Each window's threshold: its group's, else ``fallback``."""
        table = np.asarray([self.thresholds.get(n, fallback) for n in self.names] + [fallback], dtype=np.float64)
        return table[np.where(groups < 0, len(self.names), groups)]

    def means_of(self, groups: np.ndarray, fallback: Normaliser) -> np.ndarray:
        """Each window's per-feature training mean ``[N, F]`` (its group's normaliser, else ``fallback``)."""
        rows = [np.asarray((self.normalisers.get(n) or fallback).mean, dtype=np.float64) for n in self.names]
        table = np.stack([*rows, np.asarray(fallback.mean, dtype=np.float64)])
        return table[np.where(groups < 0, len(self.names), groups)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (``model.json`` ``peers``)."""
        return {
            "names": list(self.names),
            "columns": [int(c) for c in self.columns],
            "normalisers": {k: v.to_dict() for k, v in sorted(self.normalisers.items())},
            "thresholds": {k: float(v) for k, v in sorted(self.thresholds.items())},
            "budget": float(self.budget),
            "min_history": int(self.min_history),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerGroups:
        """Rebuild from :meth:`to_dict`; ModelError on missing or malformed values."""
        try:
            unknown = sorted(set(data) - {"names", "columns", "normalisers", "thresholds", "budget", "min_history"})
            if unknown:
                raise ModelError(f"unknown peer-group keys {unknown}")
            return cls(
                [str(n) for n in data["names"]],
                [int(c) for c in data["columns"]],
                {str(k): Normaliser.from_dict(v) for k, v in data["normalisers"].items()},
                {str(k): float(v) for k, v in data["thresholds"].items()},
                float(data["budget"]),
                int(data["min_history"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"invalid peer groups: {exc!r}") from None


def fit_group_normalisers(x: np.ndarray, groups: np.ndarray, names: list[str], min_windows: int,
                          comm: Collective, std_floor: float = STD_FLOOR) -> dict[str, Normaliser]:
    """One normaliser per group with at least ``min_windows`` training windows over all ranks.

    Every rank calls this with the same ``names``, so the collective calls line up; a group
    below the minimum keeps the global normaliser (fewer windows would give noisy statistics).
    """
    counts = torch.tensor([float((groups == gi).sum()) for gi in range(len(names))], dtype=torch.float64)
    totals = comm.gather(counts).numpy().sum(axis=0) if len(names) else np.zeros(0)
    out: dict[str, Normaliser] = {}
    for gi, name in enumerate(names):
        if totals[gi] >= min_windows:
            out[name] = fit_normaliser(x[groups == gi], comm, std_floor)
    if comm.rank == 0:
        log.info("normaliser: own statistics for peer groups %s (of %s; the others use the global one)",
                 sorted(out), names)
    return out
