"""Shared set-up of the metric-drift benches (``metrics_drift.py``, ``walkforward.py``).

Both start from a clean work folder (the figures must be of this code, not of an old lake) and
the same generated metric series with level shifts, seasonality and injected incidents.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from loganomaly.ingest import synthetic
from loganomaly.ingest.synthetic import MetricDrift


def fresh_drifting_series(work: Path, hosts: int, days: int, incidents: int, seed: int) -> synthetic.GeneratedData:
    """Log at INFO to stderr, empty ``work`` and generate drifting metric series under it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if work.exists():
        shutil.rmtree(work)
    return synthetic.generate_metrics(work / "generated", hosts=hosts, days=days, anomalies=incidents, seed=seed,
                                      drift=MetricDrift())
