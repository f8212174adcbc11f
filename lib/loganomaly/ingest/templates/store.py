"""Versioned template-miner state beside the lake: JSON files plus the ``templates`` Delta table.

Each fitted state is written once to ``<lake>/_templates/<version>.json`` (the version is the
state's content hash, so the same state is never stored twice) and its templates are appended
to the ``templates`` table (state version, template id, text, training size, run id), where SQL
can see them and join them to ``events.template_id``. The *current* state is the one of the
newest ``templates`` commit; the JSON file is written before that commit, so a crash in between
leaves an unused file, never a table row without its state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from loganomaly.config import TemplatesConfig
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.ingest.templates.masking import TemplateConfig, preset
from loganomaly.ingest.templates.miner import Templates
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import rows_table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from loganomaly.lake.tables import Lake

log = logging.getLogger(__name__)

STATE_DIR = "_templates"


def template_config(cfg: TemplatesConfig) -> TemplateConfig:
    """The miner settings of a run: the named preset (or the default) with ``options`` applied."""
    base = preset(cfg.preset) if cfg.preset else TemplateConfig()
    if not cfg.options:
        return base
    data = base.to_dict()
    # The fields, not to_dict's keys: to_dict leaves settings that are off out of the state.
    valid = {f.name for f in dataclasses.fields(TemplateConfig)}
    unknown = sorted(set(cfg.options) - valid)
    if unknown:
        raise ConfigError(f"templates.options: unknown keys {unknown}; valid keys: {', '.join(sorted(valid))}")
    data.update(cfg.options)
    return TemplateConfig.from_dict(data)


def state_path(lake: Lake, version: str) -> Path:
    return Path(lake.root) / STATE_DIR / f"{version}.json"


def current_version(lake: Lake) -> str | None:
    """Version of the newest state recorded in ``templates``, or None before the first fit."""
    if not lake.exists("templates"):
        return None
    from pyspark.sql import functions as F

    row = (
        lake.read("templates")
        .select("state_version", "created_at")
        .orderBy(F.col("created_at").desc(), F.col("state_version"))
        .limit(1)
        .collect()
    )
    return str(row[0].state_version) if row else None


def load_state(lake: Lake, version: str | None = None) -> Templates | None:
    """The current (or a given) state, or None when nothing was fitted yet.

    Raises:
        StageInputError: the table names a state whose file is missing (a lake copied without
            its ``_templates`` folder).
    """
    version = version or current_version(lake)
    if version is None:
        return None
    path = state_path(lake, version)
    if not path.is_file():
        raise StageInputError(
            f"template state {version} is recorded in the templates table but {path} is missing; "
            "copy the lake with its _templates folder or re-ingest with templates.refit=true"
        )
    return Templates.load(path)


def save_state(
    spark: SparkSession, lake: Lake, templates: Templates, run_id: str, fitted_until: str
) -> str:
    """Store a fitted state (file first, then the ``templates`` rows) and return its version."""
    version = templates.version
    path = state_path(lake, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        templates.save(path)
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        (version, t.template_id, t.template, int(t.size), fitted_until or None, run_id, now)
        for t in templates.templates
    ]
    if lake.exists("templates"):
        # Idempotent: re-saving a state that is already recorded only moves "current" to it.
        lake.delete("templates", "state_version", [version])
    # From the driver's rows (no Spark job with deltars): on a first load this is the lake's
    # first commit, and a Spark job here would start the JVM's first Python worker for a few rows.
    ddl = TABLES["templates"].ddl
    lake.write_arrow("templates", rows_table(rows, ddl), ddl, mode="append", run_id=run_id)
    log.info("template state %s: %d templates saved to %s", version, len(rows), os.fspath(path))
    return version
