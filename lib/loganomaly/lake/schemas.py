"""Schemas of the project's Delta tables, as Spark DDL, with their partition columns.

Keeping them in one place lets every stage write exactly the declared columns and lets the
Spark-free parsers (which produce plain dicts) agree with the tables without importing Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Numeric fields common to network and system events; parsers fill what their format carries.
EVENT_NUMERIC_FIELDS: dict[str, str] = {
    "bytes_in": "bigint",
    "bytes_out": "bigint",
    "packets_in": "bigint",
    "packets_out": "bigint",
    "duration": "double",
    "src_port": "int",
    "dst_port": "int",
}

#: Every column of ``events`` in order, name -> Spark SQL type. Parsers return dicts with a subset
#: of these keys (missing keys are null).
EVENT_COLUMNS: dict[str, str] = {
    "event_id": "string",
    "ts": "timestamp",
    "date": "date",
    "source": "string",
    "format": "string",
    "entity": "string",
    "level": "string",
    "component": "string",
    "message": "string",
    "template_id": "string",
    "template": "string",
    "params": "array<string>",
    **EVENT_NUMERIC_FIELDS,
    "status": "string",
    "proto": "string",
    "src_addr": "string",
    "dst_addr": "string",
    "attributes": "map<string,string>",
    "label": "string",
    "file": "string",
    "line_no": "bigint",
    "run_id": "string",
}

QUARANTINE_COLUMNS: dict[str, str] = {
    "file": "string",
    "line_no": "bigint",
    "format": "string",
    "reason": "string",
    "raw": "string",
    "raw_length": "bigint",
    "run_id": "string",
}

INGESTED_FILES_COLUMNS: dict[str, str] = {
    "path": "string",
    "size": "bigint",
    "mtime": "bigint",
    "format": "string",
    "lines": "bigint",
    "events": "bigint",
    "quarantined": "bigint",
    "run_id": "string",
    "ingested_at": "timestamp",
    # 0 for a file's first content; +1 each time the file is found smaller than recorded (rotated
    # by copytruncate or truncated and rewritten). Ledgers written before it existed read it as 0.
    "generation": "bigint",
    # blake2b (16 bytes, hex) of the file's first min(64 KiB, size) bytes when loaded: the content
    # rule that tells an append (same head, larger) from a new file at the same path (another
    # head). Ledgers written before it existed read it as NULL and fall back to the size rule.
    "head_hash": "string",
    # "loaded", or "vanished" (listed, then gone before it was read: counts 0, loads when it
    # reappears); NULL in ledgers written before it existed means loaded.
    "status": "string",
    # Why a row is not "loaded" (NULL when it is).
    "reason": "string",
    # How the generation's event ids are built (loganomaly.ingest.ids): 1 (file key and hex line
    # number) for generations loaded since it existed; ledgers written before it read it as 0
    # (a blake2b hash per line), and a generation read again keeps its scheme.
    "id_scheme": "bigint",
}

#: One row per template of every fitted template-miner state (see loganomaly.ingest.templates.store).
TEMPLATE_COLUMNS: dict[str, str] = {
    "state_version": "string",
    "template_id": "string",
    "template": "string",
    "size": "bigint",
    "fitted_until": "string",
    "run_id": "string",
    "created_at": "timestamp",
}

#: One row per (entity, window). The window's raw lines are the ``events`` rows of ``entity`` with
#: ``window_start <= ts < window_end``; ``first_event_ts``/``last_event_ts`` narrow that range.
SEQUENCE_COLUMNS: dict[str, str] = {
    "entity": "string",
    "window_start": "timestamp",
    "window_end": "timestamp",
    "date": "date",
    "n_steps": "int",
    "n_features": "int",
    # Names of the n_features columns, in order; the same list on every row of a featurize run.
    "feature_names": "array<string>",
    # Row-major [n_steps, n_features] matrix of raw (not yet normalised) step features, as one
    # little-endian float32 tensor (n_steps * n_features * 4 bytes). Tables written before this
    # layout hold array<float> and keep it (loganomaly.features.layout; readers read both).
    "features": "binary",
    "n_events": "bigint",
    # Events of the window whose label is not normal (0 for unlabelled logs): what
    # ``train.normal_only`` filters on. Evaluation joins the events' labels itself.
    "n_abnormal": "bigint",
    "first_event_ts": "timestamp",
    "last_event_ts": "timestamp",
    "run_id": "string",
}

#: One row per session: events sharing a session key (e.g. an HDFS block id) in time order.
SESSION_COLUMNS: dict[str, str] = {
    "session_key": "string",
    "source": "string",
    "start": "timestamp",
    "end": "timestamp",
    "date": "date",
    "n_events": "bigint",
    "template_ids": "array<string>",
    # events.event_id of each event, aligned with template_ids.
    "event_ids": "array<string>",
    # Any non-null label other than "normal" among the session's events, else null.
    "label": "string",
    "run_id": "string",
}

#: One row per entity (see loganomaly.features.entities): its peer group and how it was decided,
#: when it was first and last seen, how much it did. Upserted on ``entity`` by every featurize.
ENTITY_COLUMNS: dict[str, str] = {
    "entity": "string",
    "group": "string",
    # role:<name>, zeek_local_orig, local_networks, not_local or not_an_address.
    "group_rule": "string",
    "first_seen": "timestamp",
    "last_seen": "timestamp",
    "events": "bigint",
    "windows": "bigint",
    "run_id": "string",
}

#: Peer-group baselines of the training period: the mean (log1p units) of each relative feature's
#: base over the group's busy steps, what a cold-start entity of the group is compared against.
#: Group ``*`` is every entity (the fallback for a group unseen in training).
PEER_BASELINE_COLUMNS: dict[str, str] = {
    "group": "string",
    "feature": "string",
    "baseline": "double",
    "run_id": "string",
}

SCORE_COLUMNS: dict[str, str] = {
    "entity": "string",
    "window_start": "timestamp",
    "window_end": "timestamp",
    "date": "date",
    "score": "double",
    "threshold": "double",
    "is_anomaly": "boolean",
    "explanation": "string",
    "top_features": "array<string>",
    "model_version": "string",
    "run_id": "string",
}


#: Columns of the ``evaluations`` table (see loganomaly.evaluation.stage): a few rows per model and label source.
#: Undefined metrics (ROC-AUC with one class only) are null rather than NaN so SQL aggregates work.
EVALUATION_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "evaluated_at": "timestamp",
    "model_version": "string",
    "label_source": "string",
    "scores_version": "bigint",
    "n_windows": "bigint",
    "n_positive": "bigint",
    "threshold_kind": "string",
    "threshold": "double",
    "precision": "double",
    "recall": "double",
    "f1": "double",
    "roc_auc": "double",
    "pr_auc": "double",
    "tp": "bigint",
    "fp": "bigint",
    "tn": "bigint",
    "fn": "bigint",
}

#: Template id of a message that no learned template covers (hash ids are ``T`` + 12 hex digits,
#: so this can never collide with one).
UNKNOWN_TEMPLATE_ID = "T0"


@dataclass(frozen=True)
class TableSpec:
    """A named table: its columns and partition columns."""

    name: str
    columns: dict[str, str]
    partition_by: tuple[str, ...] = ()

    @property
    def ddl(self) -> str:
        """Spark DDL string of the columns, e.g. for ``spark.createDataFrame(rows, spec.ddl)``."""
        return ", ".join(f"`{name}` {tp}" for name, tp in self.columns.items())


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("events", EVENT_COLUMNS, ("date",)),
        TableSpec("quarantine", QUARANTINE_COLUMNS),
        TableSpec("ingested_files", INGESTED_FILES_COLUMNS),
        TableSpec("templates", TEMPLATE_COLUMNS),
        TableSpec("sequences", SEQUENCE_COLUMNS, ("date",)),
        TableSpec("sessions", SESSION_COLUMNS, ("date",)),
        TableSpec("entities", ENTITY_COLUMNS),
        TableSpec("peer_baselines", PEER_BASELINE_COLUMNS),
        TableSpec("scores", SCORE_COLUMNS, ("date",)),
        TableSpec("anomalies", SCORE_COLUMNS, ("date",)),
        TableSpec("evaluations", EVALUATION_COLUMNS),
    )
}
