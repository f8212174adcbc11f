"""The extension points of loganomaly: one registry of named implementations each.

================  ==================  =================================================
registry          config key          what an entry is
================  ==================  =================================================
``MODEL_KINDS``   ``model.kind``      a :class:`loganomaly.models.kind.ModelKind`
``LOG_FORMATS``   ``format`` option   a :class:`loganomaly.ingest.formats.base.LogFormat`
``BACKENDS``      ``train.backend``   a :class:`loganomaly.training.backends.Backend`
``READERS``       ``train.reader``    a :class:`loganomaly.features.split.Reader`
================  ==================  =================================================

Each registry is the one list of its names: the CLI's choices, the config's validation and the
stages' dispatch all read it, so adding an implementation is one new module and one line here
(or one :meth:`Registry.register` call from outside the package, as the tests do).

Why entries are ``"module:attribute"`` strings resolved on first use: the registries sit at the
bottom of the package (the config validates names against them), while the implementations live
in the layers above (a model kind needs torch, a backend pyspark). Naming them by path keeps the
import graph one-way and keeps a stage from paying for what it does not use (``ingest`` never
imports torch). Resolution is :func:`importlib.import_module`, the same mechanism as entry points.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from loganomaly.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["BACKENDS", "LOG_FORMATS", "MODEL_KINDS", "READERS", "Registry"]


class Registry(Generic[T]):
    """Named implementations of one extension point, in a meaningful order (e.g. detection order).

    Args:
        what: what an entry is, for error messages (``model kind``).
        key: the setting that names an entry (``model.kind``), for error messages.
        entries: name -> ``"package.module:attribute"`` (resolved on first :meth:`get`) or the object.
    """

    def __init__(self, what: str, key: str, entries: dict[str, str | T]) -> None:
        self.what = what
        self.key = key
        self._entries: dict[str, str | T] = dict(entries)
        self._resolved: dict[str, T] = {}

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def check(self, name: str) -> str:
        """``name`` when registered.

        Raises:
            ConfigError: unknown name; the message lists the registered ones.
        """
        if name not in self._entries:
            raise ConfigError(f"unknown {self.key} {name!r} (a {self.what}); choose one of: {', '.join(self._entries)}")
        return name

    def get(self, name: str) -> T:
        """The implementation registered as ``name``, imported on first use.

        Raises:
            ConfigError: unknown name.
        """
        self.check(name)
        if name not in self._resolved:
            entry = self._entries[name]
            if isinstance(entry, str):
                module, _, attribute = entry.partition(":")
                self._resolved[name] = getattr(importlib.import_module(module), attribute)
            else:
                self._resolved[name] = entry
        return self._resolved[name]

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, implementation) for every entry, importing each."""
        for name in self._entries:
            yield name, self.get(name)

    def register(self, name: str, entry: str | T, *, before: str | None = None, replace: bool = False) -> None:
        """Add an implementation (e.g. a plug-in kind from a user's package, or a test's toy one).

        Args:
            before: insert before this entry (order matters where it is a detection order).
            replace: allow replacing an existing entry.

        Raises:
            ConfigError: the name is taken (and ``replace`` is false), or ``before`` is unknown.
        """
        if name in self._entries and not replace:
            raise ConfigError(f"{self.what} {name!r} is already registered")
        if before is not None:
            self.check(before)
            items = [(k, v) for k, v in self._entries.items() if k != name]
            at = [k for k, _ in items].index(before)
            items.insert(at, (name, entry))
            self._entries = dict(items)
        else:
            self._entries[name] = entry
        self._resolved.pop(name, None)
        log.debug("registered %s %s", self.what, name)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests undo their registrations with it)."""
        self.check(name)
        del self._entries[name]
        self._resolved.pop(name, None)


#: Model kinds (``model.kind``). A bundle records its kind's name, and scoring, evaluation and the
#: report look the kind up from the bundle, never from the config.
MODEL_KINDS: Registry[Any] = Registry("model kind", "model.kind", {
    "autoencoder": "loganomaly.models.autoencoder:KIND",
    "classifier": "loganomaly.models.classifier:KIND",
    "deeplog": "loganomaly.models.deeplog:KIND",
})

#: Log formats (an ingest source's ``format`` option). Detection tries them in this order.
LOG_FORMATS: Registry[Any] = Registry("log format", "format", {
    "json": "loganomaly.ingest.formats.json:FORMAT",
    "zeek": "loganomaly.ingest.formats.zeek:FORMAT",
    "syslog": "loganomaly.ingest.formats.syslog:FORMAT",
    "access": "loganomaly.ingest.formats.access:FORMAT",
    "loghub": "loganomaly.ingest.formats.loghub:FORMAT",
    "csv": "loganomaly.ingest.formats.csv:FORMAT",
})

#: Training backends (``train.backend``): where the ranks of one training run execute.
BACKENDS: Registry[Any] = Registry("training backend", "train.backend", {
    "local": "loganomaly.training.backends:LOCAL",
    "torch_distributor": "loganomaly.training.backends:TORCH_DISTRIBUTOR",
    "horovod": "loganomaly.training.backends:HOROVOD",
})

#: Readers (``train.reader``): how each rank reads its shard of a pinned ``sequences`` snapshot.
READERS: Registry[Any] = Registry("reader", "train.reader", {
    "arrow": "loganomaly.training.readers.arrow:READER",
    "petastorm": "loganomaly.training.readers.petastorm:READER",
})
