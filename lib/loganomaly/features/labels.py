"""Which labels mean "normal": one list for training (``train.normal_only``, DeepLog) and for judging.

Loghub BGL marks normal lines with ``-``; the CTU captures call unlabelled traffic ``Background``;
0/1 label files and CSV ``is_anomaly`` columns use ``0``/``false``. A null label is normal too.
Labels are compared lower-cased and trimmed. Training and evaluation read this one list, so a
label can never count as abnormal when training and as normal when judging.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

__all__ = ["NORMAL_LABELS", "is_abnormal_label", "is_normal_value"]

NORMAL_LABELS: tuple[str, ...] = ("normal", "benign", "background", "-", "", "0", "false")


def is_normal_value(label: object, normal_labels: Iterable[str] = NORMAL_LABELS) -> bool:
    """Whether one label value means normal (Spark-free: the rule :func:`is_abnormal_label` applies)."""
    if label is None:
        return True
    return str(label).strip().lower() in {str(v).strip().lower() for v in normal_labels}


def is_abnormal_label(label: Column, normal_labels: Iterable[str] = NORMAL_LABELS) -> Column:
    """Column expression: a non-null label outside ``normal_labels`` (compared lower-cased, trimmed)."""
    from pyspark.sql import functions as F

    normal = sorted({str(v).strip().lower() for v in normal_labels})
    return label.isNotNull() & ~F.lower(F.trim(label)).isin(normal)
