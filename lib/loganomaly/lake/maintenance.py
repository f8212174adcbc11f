"""``maintain``: compaction and retention of the lake's tables (OPTIMIZE, then VACUUM).

Nightly ingest appends and per-date replacements leave many small files, and every replaced or
compacted file stays on disk for time travel. Run this weekly (after the weekly training, say):
each table is compacted (:meth:`Lake.optimize`, one new version, same rows), then files that no
snapshot of the last ``retention_hours`` needs are deleted (:meth:`Lake.vacuum`), so time travel
keeps working within that window. Both engines do both steps (delta-spark: ``OPTIMIZE``/``VACUUM``;
deltars: delta-rs ``optimize.compact``/``vacuum``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loganomaly.config import Config
from loganomaly.errors import TableNotFoundError
from loganomaly.lake.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Delta's own default retention (7 days); shorter breaks time travel to older versions.
DEFAULT_RETENTION_HOURS = 168


@dataclass
class MaintenanceSummary:
    engine: str
    retention_hours: int
    #: Per table: files compacted (removed/added) and files vacuumed.
    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "retention_hours": self.retention_hours, "tables": self.tables}


def run(
    spark: SparkSession,
    cfg: Config,
    tables: Sequence[str] = (),
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    lake: Lake | None = None,
) -> MaintenanceSummary:
    """Compact, then vacuum, ``tables`` (default: every table under the lake root).

    Example:
        >>> run(spark, cfg, retention_hours=168).tables["events"]  # doctest: +SKIP
        {'files_removed': 31, 'files_added': 3, 'files_vacuumed': 40}
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    names = list(tables) or lake.tables()
    summary = MaintenanceSummary(lake.engine, int(retention_hours))
    for name in names:
        if not lake.exists(name):
            raise TableNotFoundError(f"table {name!r} does not exist under {lake.root}")
        compacted = lake.optimize(name)
        vacuumed = lake.vacuum(name, retention_hours=int(retention_hours))
        summary.tables[name] = {**compacted, "files_vacuumed": len(vacuumed)}
    log.info("maintained %d tables of %s (engine %s, retention %d h)", len(names), lake.root, lake.engine,
             retention_hours)
    return summary
