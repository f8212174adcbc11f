"""``deltars``: a Spark 4 Python data source that reads and writes Delta tables through delta-rs.

Why it exists: the Delta Lake Spark jars come from Maven, which some machines cannot reach,
while delta-rs (PyPI ``deltalake``) needs no JVM. Each Spark task writes its rows as Parquet
files with pyarrow (the Arrow writer, 5-11x faster than the row writer); the driver-side
``commit()`` adds all of them to the Delta log in ONE transaction, so a job either adds a new
table version with every file or, when a task fails, ``abort()`` deletes what the other tasks
wrote and the table is unchanged. The reader lists the active files of a snapshot (latest or
``versionAsOf``) and streams them as Arrow batches, adding the partition columns that Delta
keeps in the log rather than in the files.

Options:
    path: table directory (required).
    versionAsOf: snapshot to read.
    partitionBy: comma-separated partition columns when the table is created.
    replaceWhere: JSON ``{"col": [values...]}``; with save mode overwrite, only those partitions
        are replaced, and every written row must fall inside them.
    runId: stored in the commit's metadata for lineage.
    writeId: hex id carried by every file name of this write (default: a fresh one), so the
        caller can sweep the files of a failed write with :func:`remove_write_files`.

Both engines write standard Delta tables, so a table written here reads in Databricks,
delta-spark, delta-rs, Polars or DuckDB.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.types import StructType

from loganomaly.errors import SchemaMismatchError, TableError, TableNotFoundError
from loganomaly.lake.snapshot import checked_table

FORMAT_NAME = "deltars"
#: Target bytes of Parquet read by one Spark task.
READ_SPLIT_BYTES = 64 * 1024 * 1024
#: Rows per Arrow batch handed back to Spark by the reader.
READ_BATCH_ROWS = 8192
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


# --------------------------------------------------------------------------------------------
# Schema helpers (driver and executors)
# --------------------------------------------------------------------------------------------


def delta_arrow_type(tp: pa.DataType) -> pa.DataType:
    """The Arrow type Delta stores for ``tp``: timestamps become microseconds in UTC.

    delta-rs rejects zone names other than UTC, and Spark's session zone is UTC anyway.
    """
    if pa.types.is_timestamp(tp):
        return pa.timestamp("us", "UTC")
    if pa.types.is_large_string(tp):
        return pa.string()
    if pa.types.is_large_binary(tp):
        return pa.binary()
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        return pa.list_(pa.field("element", delta_arrow_type(tp.value_type), nullable=True))
    if pa.types.is_map(tp):
        return pa.map_(delta_arrow_type(tp.key_type), pa.field("value", delta_arrow_type(tp.item_type), True))
    if pa.types.is_struct(tp):
        return pa.struct([pa.field(f.name, delta_arrow_type(f.type), nullable=True) for f in tp])
    return tp


def delta_arrow_schema(schema: pa.Schema) -> pa.Schema:
    """Every field nullable and Delta-compatible types (see :func:`delta_arrow_type`)."""
    return pa.schema([pa.field(f.name, delta_arrow_type(f.type), nullable=True) for f in schema])


def spark_to_delta_arrow(schema: StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return delta_arrow_schema(to_arrow_schema(schema, timestamp_utc=True))


def _type_key(tp: pa.DataType) -> str:
    """A comparison key that ignores nullability and list/map child field names."""
    tp = delta_arrow_type(tp)
    if pa.types.is_list(tp):
        return f"list<{_type_key(tp.value_type)}>"
    if pa.types.is_map(tp):
        return f"map<{_type_key(tp.key_type)},{_type_key(tp.item_type)}>"
    if pa.types.is_struct(tp):
        return "struct<" + ",".join(f"{f.name}:{_type_key(f.type)}" for f in tp) + ">"
    return str(tp)


def schema_differences(table: pa.Schema, incoming: pa.Schema) -> list[str]:
    """Human-readable differences between a table's schema and a write's schema (empty if equal)."""
    problems = []
    table_fields = {f.name: f for f in table}
    incoming_fields = {f.name: f for f in incoming}
    for name in table_fields.keys() - incoming_fields.keys():
        problems.append(f"missing column {name!r}")
    for name in incoming_fields.keys() - table_fields.keys():
        problems.append(f"unexpected column {name!r}")
    for name in table_fields.keys() & incoming_fields.keys():
        want, got = _type_key(table_fields[name].type), _type_key(incoming_fields[name].type)
        if want != got:
            problems.append(f"column {name!r} is {got}, table has {want}")
    return sorted(problems)


def check_schema(path: str, table: pa.Schema, incoming: pa.Schema) -> None:
    """Raise :class:`SchemaMismatchError` naming every difference."""
    problems = schema_differences(table, incoming)
    if problems:
        raise SchemaMismatchError(f"schema mismatch writing {path}: " + "; ".join(problems))


def table_arrow_schema(path: str, version: int | None = None) -> pa.Schema:
    from deltalake import DeltaTable

    return pa.schema(DeltaTable(path, version=version).schema().to_arrow())


def partition_value_string(value: Any) -> str | None:
    """Delta's string form of a partition value."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_partition_value(text: str | None, tp: pa.DataType) -> Any:
    """Inverse of :func:`partition_value_string` for the reader."""
    if text is None or text == HIVE_NULL:
        return None
    if pa.types.is_date(tp):
        return dt.date.fromisoformat(text)
    if pa.types.is_timestamp(tp):
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    if pa.types.is_integer(tp):
        return int(text)
    if pa.types.is_floating(tp):
        return float(text)
    if pa.types.is_boolean(tp):
        return text.lower() == "true"
    return text


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


@dataclass
class WrittenFile:
    """One Parquet file written by a task, as the driver needs it for the Delta add action."""

    path: str  # relative to the table root
    size: int
    partition_values: dict[str, str | None]
    modification_time: int
    num_records: int


@dataclass
class DeltaRsCommitMessage(WriterCommitMessage):
    files: list[WrittenFile] = field(default_factory=list)


def _options_partition_by(options: dict[str, str]) -> list[str]:
    raw = options.get("partitionBy") or options.get("partitionby") or ""
    return [c.strip() for c in raw.split(",") if c.strip()]


def _options_replace_where(options: dict[str, str]) -> dict[str, list[str | None]] | None:
    raw = options.get("replaceWhere") or options.get("replacewhere")
    if not raw:
        return None
    data = json.loads(raw)
    return {str(k): [partition_value_string(v) for v in vals] for k, vals in data.items()}


def _get(options: Any, key: str) -> str | None:
    # Spark hands options over as a case-insensitive dict.
    value = options.get(key)
    return None if value is None else str(value)


#: Rows per Parquet row group that :class:`PartitionedFileWriter` gathers before writing. Tasks
#: hand it batches of 8,192 rows, and each Parquet write makes at least one row group: row groups
#: that small cost a dictionary page and statistics per column each, to write and to read.
#: Gathering eight batches wrote 200,000 generated Zeek events 12 % faster into 3 % smaller
#: files; the memory held is one row group per open file (tens of MB for events).
ROW_GROUP_ROWS = 65_536


def dictionary_columns(table: pa.Table) -> list[str]:
    """The Parquet column paths of ``table`` worth dictionary encoding: the top-level columns
    with at most one distinct value per two rows, the keys of map columns, and map values and
    list elements holding at most one distinct value per two entries.

    Why: pyarrow dictionary-encodes every column by default and falls back to plain encoding
    only once a column's dictionary page grows too large, so a unique column (event ids, times,
    messages, line numbers) pays for building a dictionary it then drops. Deciding per file from
    its first batch made writing 200,000 generated Zeek events about a fifth faster and the files
    an eighth smaller (``bench/ingest_stages.py`` times the writer); a column misjudged by that
    batch is still written correctly, only encoded less well. Map values and list elements
    (attributes, template parameters) are judged the same way over all their entries: the
    parameters of connection messages (addresses, ports) repeat, and encoding them so wrote
    generated Zeek events 9 % smaller (79 -> 72 bytes a row) in the same time."""
    import pyarrow.compute as pc

    half = table.num_rows // 2
    paths = []
    for f in table.schema:
        if pa.types.is_map(f.type):
            paths.append(f"{f.name}.key_value.key")
            items = table.column(f.name).combine_chunks().items
            if len(items) and pc.count_distinct(items).as_py() <= len(items) // 2:
                paths.append(f"{f.name}.key_value.value")
        elif pa.types.is_list(f.type):
            elements = pc.list_flatten(table.column(f.name))
            if len(elements) and pc.count_distinct(elements).as_py() <= len(elements) // 2:
                paths.append(f"{f.name}.list.element")
        elif pa.types.is_nested(f.type):
            continue
        elif pc.count_distinct(table.column(f.name)).as_py() <= half:
            paths.append(f.name)
    return paths


def statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose Parquet min/max/null-count statistics are written: the top-level
    columns that are not maps, lists or structs.

    Why: readers prune row groups by these statistics only for filters on plain columns (Spark
    pushes no predicate into a map's values or a list's elements), while computing them for
    ``attributes`` and ``params`` took about a tenth of writing generated CSV events and a few
    per cent of Zeek's (``bench/ingest_stages.py``'s write stage), for statistics nobody reads."""
    return [f.name for f in schema if not pa.types.is_nested(f.type)]


class PartitionedFileWriter:
    """Streams Arrow batches into Parquet files of one task, one open file per partition value.

    Files are named ``part-<write id>-<task id>-NNNNN.snappy.parquet`` so the driver can find and
    delete the files of a failed write, even of tasks that died before reporting them. Nothing
    is visible in the table until the driver commits the returned :class:`WrittenFile` list.
    """

    def __init__(self, root: str, arrow_schema: pa.Schema, partition_by: list[str], write_id: str) -> None:
        self.root = root
        self.arrow_schema = arrow_schema
        self.partition_by = partition_by
        self.data_schema = pa.schema([f for f in arrow_schema if f.name not in partition_by])
        self.task_id = f"{write_id}-{uuid.uuid4().hex[:12]}"
        self.writers: dict[tuple[str | None, ...], tuple[str, pq.ParquetWriter]] = {}
        self.counts: dict[tuple[str | None, ...], int] = {}
        # Rows not yet written, per open file: each Parquet write makes at least one row group,
        # so batches are gathered into row groups of about ROW_GROUP_ROWS (see write_batch).
        self.pending: dict[tuple[str | None, ...], list[pa.Table]] = {}

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        table = table.cast(self.arrow_schema)
        for key, whole in self._split(table):
            part = whole.select(self.data_schema.names)
            if key not in self.writers:
                rel_dir = "/".join(
                    f"{col}={HIVE_NULL if v is None else v}" for col, v in zip(self.partition_by, key, strict=True)
                )
                name = f"part-{self.task_id}-{len(self.writers):05d}.snappy.parquet"
                rel = f"{rel_dir}/{name}" if rel_dir else name
                full = os.path.join(self.root, rel)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                self.writers[key] = (
                    rel,
                    pq.ParquetWriter(
                        full,
                        self.data_schema,
                        compression="snappy",
                        use_dictionary=dictionary_columns(part),
                        write_statistics=statistics_columns(self.data_schema),
                    ),
                )
                self.counts[key] = 0
            pending = self.pending.setdefault(key, [])
            pending.append(part)
            self.counts[key] += part.num_rows
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                self._flush(key)

    def _flush(self, key: tuple[str | None, ...]) -> None:
        """Write the rows gathered for ``key``'s file as one row group."""
        parts = self.pending.pop(key, [])
        if parts:
            self.writers[key][1].write_table(parts[0] if len(parts) == 1 else pa.concat_tables(parts))

    def close(self) -> list[WrittenFile]:
        """Close every file and describe it for the Delta add action."""
        files = []
        for key in list(self.pending):
            self._flush(key)
        for key, (rel, writer) in self.writers.items():
            writer.close()
            st = os.stat(os.path.join(self.root, rel))
            files.append(
                WrittenFile(
                    path=rel,
                    size=st.st_size,
                    partition_values=dict(zip(self.partition_by, key, strict=True)),
                    modification_time=int(st.st_mtime * 1000),
                    num_records=self.counts[key],
                )
            )
        self.writers.clear()
        return files

    def discard(self) -> None:
        """Close and delete every file written so far (the task failed)."""
        self.pending.clear()
        for rel, writer in self.writers.values():
            try:
                writer.close()
            finally:
                _remove_quietly(os.path.join(self.root, rel))
        self.writers.clear()

    def _split(self, table: pa.Table) -> Iterator[tuple[tuple[str | None, ...], pa.Table]]:
        if not self.partition_by or table.num_rows == 0:
            if table.num_rows:
                yield (), table
            return
        if len(self.partition_by) == 1:
            # The common case (a date): split with Arrow kernels, not a Python loop over rows.
            import pyarrow.compute as pc

            column = table.column(self.partition_by[0])
            values = column.unique().to_pylist()
            if len(values) == 1:
                yield (partition_value_string(values[0]),), table
                return
            for value in values:
                mask = pc.is_null(column) if value is None else pc.equal(column, pa.scalar(value, column.type))
                yield (partition_value_string(value),), table.filter(mask)
            return
        keys = [[partition_value_string(v) for v in table.column(c).to_pylist()] for c in self.partition_by]
        combined = list(zip(*keys, strict=True))
        if len(set(combined)) == 1:
            yield combined[0], table
            return
        groups: dict[tuple[str | None, ...], list[int]] = {}
        for i, key in enumerate(combined):
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            yield key, table.take(pa.array(idx, pa.int64()))


class DeltaRsWriter(DataSourceArrowWriter):
    """Writes Parquet per task; commits one Delta transaction on the driver."""

    def __init__(self, options: Any, schema: StructType, overwrite: bool) -> None:
        path = _get(options, "path")
        if not path:
            raise TableError("deltars: option 'path' is required")
        self.path = os.path.abspath(path)
        self.overwrite = overwrite
        self.run_id = _get(options, "runId") or ""
        # Every file of this write carries the id, so abort() can find files of tasks that were
        # killed before they could report them.
        self.write_id = _get(options, "writeId") or uuid.uuid4().hex
        if not self.write_id.isalnum():
            raise TableError(f"deltars: writeId must be alphanumeric, got {self.write_id!r}")
        self.arrow_schema = spark_to_delta_arrow(schema)
        opts = {k: str(v) for k, v in dict(options).items()}
        self.replace_where = _options_replace_where(opts)
        if self.replace_where and not overwrite:
            raise TableError("deltars: replaceWhere needs save mode 'overwrite'")
        existing = self._existing_partition_by()
        requested = _options_partition_by(opts)
        if existing is not None:
            if requested and requested != existing:
                raise SchemaMismatchError(
                    f"partition columns {requested} differ from the table's {existing} at {self.path}"
                )
            self.partition_by = existing
            if not (overwrite and not self.replace_where):
                check_schema(self.path, table_arrow_schema(self.path), self.arrow_schema)
        else:
            self.partition_by = requested
        unknown = [c for c in self.partition_by if c not in self.arrow_schema.names]
        if unknown:
            raise TableError(f"deltars: partition columns {unknown} are not in the schema")

    def _existing_partition_by(self) -> list[str] | None:
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(self.path):
            return None
        return list(DeltaTable(self.path).metadata().partition_columns)

    def file_writer(self) -> PartitionedFileWriter:
        """A writer for one task's files of this write (also used directly by ingest)."""
        return PartitionedFileWriter(self.path, self.arrow_schema, self.partition_by, self.write_id)

    # Runs on an executor, once per task.
    def write(self, iterator: Iterator[pa.RecordBatch]) -> DeltaRsCommitMessage:
        writer = self.file_writer()
        try:
            for batch in iterator:
                writer.write_batch(batch)
        except BaseException:
            writer.discard()
            raise
        return DeltaRsCommitMessage(files=writer.close())

    # Runs on the driver after every task succeeded.
    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import (
            AddAction,
            CommitProperties,
            RemoveAction,
            create_table_with_add_actions,
        )

        written = [f for m in messages if isinstance(m, DeltaRsCommitMessage) for f in m.files]
        try:
            if self.replace_where:
                self._check_inside_replace_where(written)
            adds: list[AddAction | RemoveAction] = [
                AddAction(
                    f.path,
                    f.size,
                    f.partition_values,
                    f.modification_time,
                    True,
                    json.dumps({"numRecords": f.num_records}),
                )
                for f in written
            ]
            schema = Schema.from_arrow(self.arrow_schema)
            props = CommitProperties(
                custom_metadata=run_metadata(self.run_id) if self.run_id else None
            )
            if not DeltaTable.is_deltatable(self.path):
                os.makedirs(self.path, exist_ok=True)
                create_table_with_add_actions(
                    self.path,
                    schema,
                    [a for a in adds if isinstance(a, AddAction)],
                    mode="error",
                    partition_by=self.partition_by or None,
                    commit_properties=props,
                )
                return
            table = DeltaTable(self.path)
            if self.overwrite:
                filters = (
                    [(col, "in", vals) for col, vals in self.replace_where.items()]
                    if self.replace_where
                    else None
                )
                table.create_write_transaction(
                    adds,
                    "overwrite",
                    schema,
                    partition_by=self.partition_by or None,
                    partition_filters=filters,  # type: ignore[arg-type]
                    commit_properties=props,
                )
            else:
                table.create_write_transaction(
                    adds, "append", schema, partition_by=self.partition_by or None, commit_properties=props
                )
        except BaseException:
            self._delete(written)
            raise

    def _check_inside_replace_where(self, written: list[WrittenFile]) -> None:
        assert self.replace_where is not None
        for col in self.replace_where:
            if col not in self.partition_by:
                raise TableError(f"replaceWhere column {col!r} is not a partition column of {self.path}")
        for f in written:
            for col, allowed in self.replace_where.items():
                if f.partition_values.get(col) not in allowed:
                    raise TableError(
                        f"rows with {col}={f.partition_values.get(col)!r} fall outside replaceWhere {allowed}"
                    )

    # Runs on the driver when a task failed: nothing was committed, so remove every file written.
    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        self._delete([f for m in messages if isinstance(m, DeltaRsCommitMessage) for f in m.files])

    def _delete(self, files: list[WrittenFile]) -> None:
        for f in files:
            _remove_quietly(os.path.join(self.path, f.path))
        # Files of tasks that failed or were cancelled never reached a commit message.
        remove_write_files(self.path, self.write_id)


def run_metadata(run_id: str) -> dict[str, str]:
    """commitInfo entries that carry a run id: Delta's standard ``userMetadata`` (a JSON string, as
    delta-spark writes it, so both engines' history shows it) and the older top-level key."""
    return {"loganomaly.runId": run_id, "userMetadata": json.dumps({"loganomaly.runId": run_id})}


def run_id_of(commit: dict[str, Any]) -> str | None:
    """The run id of a commit written by either engine (see :func:`run_metadata`)."""
    user = commit.get("userMetadata")
    if user:
        try:
            found = json.loads(user).get("loganomaly.runId")
        except (ValueError, AttributeError):
            found = None
        if found:
            return str(found)
    legacy = commit.get("loganomaly.runId")
    return None if legacy is None else str(legacy)


def remove_write_files(path: str, write_id: str) -> int:
    """Delete every data file of write ``write_id`` under table ``path``; return how many.

    Safe only for a write that was never committed. Spark calls ``abort()`` as soon as one task
    fails, while the other tasks of the job are still being cancelled: a Python worker that is
    destroyed after its kill timeout never runs its own clean-up, so a caller that must leave no
    orphan files sweeps again once the cancelled tasks are gone (``Lake.write`` does).
    """
    marker = f"part-{write_id}-"
    removed = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != "_delta_log"]
        for name in filenames:
            if name.startswith(marker):
                _remove_quietly(os.path.join(dirpath, name))
                removed += 1
    return removed


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    # Empty partition directories left behind are harmless but untidy.
    parent = os.path.dirname(path)
    try:
        if parent and not os.listdir(parent):
            os.rmdir(parent)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


@dataclass
class FileSlice(InputPartition):
    """Files read by one task: (absolute path, partition values) pairs."""

    files: list[tuple[str, dict[str, str | None]]]

    def __init__(self, files: list[tuple[str, dict[str, str | None]]]) -> None:
        super().__init__(files)
        self.files = files


def snapshot_files(path: str, version: int | None) -> list[tuple[str, int, dict[str, str | None]]]:
    """Active files of a snapshot: (absolute path, size, partition values as strings).

    Raises:
        TableError: the table uses deletion vectors or column mapping (:func:`checked_table`).
    """
    table = checked_table(path, version)
    partition_columns = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = actions.to_pylist()
    out = []
    for row in rows:
        values = {c: partition_value_string(row.get(f"partition.{c}")) for c in partition_columns}
        out.append((os.path.join(path, unquote(row["path"])), int(row["size_bytes"]), values))
    return sorted(out)


class DeltaRsReader(DataSourceReader):
    def __init__(self, options: Any, schema: StructType) -> None:
        self.path = os.path.abspath(_get(options, "path") or "")
        version = _get(options, "versionAsOf")
        self.version = int(version) if version not in (None, "") else None
        self.arrow_schema = spark_to_delta_arrow(schema)

    def partitions(self) -> list[InputPartition]:
        slices: list[InputPartition] = []
        current: list[tuple[str, dict[str, str | None]]] = []
        size = 0
        for path, nbytes, values in snapshot_files(self.path, self.version):
            current.append((path, values))
            size += nbytes
            if size >= READ_SPLIT_BYTES:
                slices.append(FileSlice(current))
                current, size = [], 0
        if current:
            slices.append(FileSlice(current))
        return slices or [FileSlice([])]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, FileSlice)
        for path, values in partition.files:
            parquet = pq.ParquetFile(path)
            data_names = [n for n in self.arrow_schema.names if n not in values]
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=data_names):
                columns = []
                for fld in self.arrow_schema:
                    if fld.name in values:
                        value = parse_partition_value(values[fld.name], fld.type)
                        columns.append(pa.array([value] * batch.num_rows, type=fld.type))
                    else:
                        columns.append(batch.column(fld.name).cast(fld.type))
                yield pa.RecordBatch.from_arrays(columns, schema=self.arrow_schema)


class DeltaRsDataSource(DataSource):
    """``spark.read.format("deltars")`` / ``df.write.format("deltars")``; see the module docstring."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def schema(self) -> StructType:
        from pyspark.sql.pandas.types import from_arrow_schema

        path = os.path.abspath(_get(self.options, "path") or "")
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(path):
            raise TableNotFoundError(f"no Delta table at {path}")
        version = _get(self.options, "versionAsOf")
        return from_arrow_schema(table_arrow_schema(path, int(version) if version else None))

    def reader(self, schema: StructType) -> DataSourceReader:
        return DeltaRsReader(self.options, schema)

    def writer(self, schema: StructType, overwrite: bool) -> DeltaRsWriter:
        return DeltaRsWriter(self.options, schema, overwrite)
