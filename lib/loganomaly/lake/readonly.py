"""``loganomaly sql`` is read-only: queries only, on Spark and on DataFusion.

Both engines accept statements that write: Spark's ``INSERT OVERWRITE DIRECTORY '<lake>/events'``
replaces a table's files, ``CREATE TABLE`` writes a ``spark-warehouse/``; DataFusion's
``COPY (...) TO '<lake>/events/_delta_log/...'`` overwrites a commit. The checks here run before
the engine sees the text:

* Spark (:func:`check_spark_query`): the session's own parser builds the plan, and every node of it
  must be a query node: no command (``SET``, ``CACHE``, DDL, ``DESCRIBE``...), no parsed statement
  (``INSERT``, ``CREATE``...), no ``INSERT ... DIRECTORY``, no SQL script. ``EXPLAIN <query>`` is
  allowed (its query is checked the same way). A syntax error is refused with Spark's message.
* DataFusion (:func:`check_datafusion_query`): delta-rs's ``QueryBuilder`` exposes no
  ``SQLOptions``, so the statement type is checked on the text: one statement, starting with
  ``SELECT``, ``WITH``, ``VALUES`` or ``EXPLAIN``, with no write or DDL keyword outside quotes
  and comments (a column really named e.g. ``copy`` must then be quoted).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from loganomaly.errors import QueryError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
#: Plan node types (and their subtypes) that are never a read.
_REFUSED_TYPES = (
    _LOGICAL + "Command",
    _LOGICAL + "ParsedStatement",
    _LOGICAL + "InsertIntoDir",
    _LOGICAL + "InsertIntoStatement",
    _LOGICAL + "V2CreateTablePlan",
)
#: Class names refused whatever their type (SQL scripting, anything writing by its name).
_REFUSED_NAMES = re.compile(r"Compound|Insert|Create|Replace|Drop|Alter|Merge|Delete|Update|Command|Cache|Set")
_EXPLAIN = "org.apache.spark.sql.execution.command.ExplainCommand"


def check_spark_query(spark: SparkSession, text: str) -> None:
    """Refuse ``text`` unless Spark parses it as a read-only query (or ``EXPLAIN`` of one).

    Raises:
        QueryError: a syntax error (Spark's message), or the statement that is not a read.
    """
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(text)  # type: ignore[attr-defined]
    except Exception as exc:  # pyspark's ParseException, or Py4JJavaError where not converted
        message = _java_message(exc)
        raise QueryError(f"SQL syntax error: {message}") from None
    refused = []
    for type_name in _REFUSED_TYPES:
        try:
            refused.append(jvm.java.lang.Class.forName(type_name))  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a type this Spark does not have; the names still apply
            log.debug("no class %s in this Spark", type_name)
    node = plan
    if node.getClass().getName() == _EXPLAIN:
        node = node.logicalPlan()
    stack = [node]
    while stack:
        node = stack.pop()
        cls = node.getClass()
        name = cls.getSimpleName()
        if any(r.isInstance(node) for r in refused) or _REFUSED_NAMES.search(name):
            log.warning("sql refused: %s (%s)", name, text[:200])
            raise QueryError(
                f"sql is read-only: {name} refused (only SELECT/WITH/VALUES queries and EXPLAIN of one run here)"
            )
        children = node.children()
        stack.extend(children.apply(i) for i in range(children.size()))


def run_checked(spark: SparkSession, text: str) -> DataFrame:
    """``spark.sql(text)`` (checked first by :func:`check_spark_query`) with Spark's analysis
    errors (unknown table or column) as :class:`QueryError` carrying Spark's message."""
    from pyspark.errors import AnalysisException

    try:
        return spark.sql(text)
    except AnalysisException as exc:
        raise QueryError(f"SQL refused by Spark: {_java_message(exc).splitlines()[0]}") from None


def _java_message(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            return str(java.getMessage())
        except Exception:  # noqa: BLE001 - fall back to the Python text
            pass
    return str(exc).strip()


_FIRST_WORDS = frozenset({"SELECT", "WITH", "VALUES", "EXPLAIN"})
_WRITE_WORDS = frozenset(
    {
        "ALTER", "ANALYZE", "ATTACH", "CACHE", "COPY", "CREATE", "DEALLOCATE", "DELETE", "DROP", "EXECUTE",
        "GRANT", "INSERT", "LOAD", "MERGE", "PREPARE", "REPLACE", "REVOKE", "SET", "TRUNCATE", "UPDATE",
        "VACUUM", "OVERWRITE", "INTO",
    }
)  # fmt: skip
# Quoted text and comments, removed before the keywords are looked at.
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|--[^\n]*|/\*.*?\*/", re.S)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|;")


def check_datafusion_query(text: str) -> None:
    """Refuse ``text`` unless it is one read-only statement (see the module docstring).

    Raises:
        QueryError: naming the statement or keyword refused.
    """
    bare = _QUOTED.sub(" ", text)
    if "'" in bare or '"' in bare or "/*" in bare:
        raise QueryError("sql is read-only: unterminated quote or comment refused")
    tokens: list[Any] = [t.upper() for t in _WORD.findall(bare)]
    while tokens and tokens[-1] == ";":
        tokens.pop()
    if not tokens:
        raise QueryError("sql: empty query")
    if ";" in tokens:
        raise QueryError("sql is read-only: one statement at a time")
    if tokens[0] not in _FIRST_WORDS:
        raise QueryError(
            f"sql is read-only: {tokens[0]} is not a read-only statement (only SELECT/WITH/VALUES queries "
            "and EXPLAIN run here)"
        )
    writes = sorted(set(tokens) & _WRITE_WORDS)
    if writes:
        raise QueryError(f"sql is read-only: {', '.join(writes)} refused")
