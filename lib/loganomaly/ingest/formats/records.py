"""Flat records (JSON objects, Zeek TSV rows) -> event dicts: the mapping ``json`` and ``zeek`` share."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import FormatOptions
from loganomaly.ingest.formats.values import _MISSING, _as_float, _as_int, _as_str, _attr, normalize_level

# Zeek-style fields -> event columns, with the converter enforcing each column's Python type.
_NET_FIELDS: tuple[tuple[str, str, Callable[[str, Any], Any]], ...] = (
    ("id.orig_h", "src_addr", _as_str),
    ("id.orig_p", "src_port", _as_int),
    ("id.resp_h", "dst_addr", _as_str),
    ("id.resp_p", "dst_port", _as_int),
    ("proto", "proto", _as_str),
    ("duration", "duration", _as_float),
    ("orig_bytes", "bytes_out", _as_int),
    ("resp_bytes", "bytes_in", _as_int),
    ("orig_pkts", "packets_out", _as_int),
    ("resp_pkts", "packets_in", _as_int),
)
_COUNT_COLUMNS = ("bytes_out", "bytes_in", "packets_out", "packets_in")
_STATUS_KEYS = ("conn_state", "status_code", "status")
_COMPONENT_KEYS = ("service", "service.name", "component", "logger", "logger_name", "app", "program", "_path")
_LEVEL_KEYS = ("level", "severity", "log.level", "loglevel", "lvl")
_MESSAGE_KEYS = ("message", "msg", "log", "@message")
_LABEL_KEYS = ("label", "Label")
_DETAILED_LABEL_KEYS = ("detailed-label", "detailedlabel", "detailed_label", "detailed_Label")
_ENTITY_KEYS = (
    "host",
    "hostname",
    "host.name",
    "id.orig_h",
    "src_ip",
    "src_addr",
    "source.ip",
    "client_ip",
    "entity",
)
#: A Zeek notice (a record with a ``note``) raised without a connection has no ``id.orig_h``: Zeek
#: names the host it is about in ``src`` (``Scan::Port_Scan``, ``Scan::Address_Scan``,
#: ``SSH::Password_Guessing``: the scanner, the guesser). Notice records take it as their entity
#: after every other entity key; in other records ``src`` is too vague a name (a source file, a
#: script) to read as a host, and stays an attribute.
_NOTICE_ENTITY_KEYS = (*_ENTITY_KEYS, "src")
_WARNING_ZEEK_PATHS = frozenset({"notice", "weird", "intel", "signatures"})
# Key sets for a C-speed "does this record have any of these keys" before each key-list loop: most
# records have none of most lists, and one ``isdisjoint`` costs less than the loop's lookups.
_NET_KEYS = frozenset(key for key, _, _ in _NET_FIELDS)
_STATUS_SET = frozenset(_STATUS_KEYS)
_COMPONENT_SET = frozenset(_COMPONENT_KEYS)
_DETAILED_LABEL_SET = frozenset(_DETAILED_LABEL_KEYS)
_ABSENT = object()
#: The entity keys looked up in the record (``id.orig_h`` is read from the event's ``src_addr``):
#: a record with none of them can only get its entity from ``src_addr``.
_ENTITY_FLAT_SET = frozenset(_ENTITY_KEYS) - {"id.orig_h"}
_NOTICE_ENTITY_FLAT_SET = _ENTITY_FLAT_SET | {"src"}
_ENTITY_FROM_EVENT = ("id.orig_h",)


class _RecordMapper:
    """Maps flat records (JSON, Zeek TSV) to event dicts; key lists resolved once per file."""

    __slots__ = ("opts", "level_keys", "label_keys", "message_keys", "entity_field", "level_set", "label_set", "message_set")

    def __init__(self, opts: FormatOptions) -> None:
        self.opts = opts
        self.level_keys = (opts.level_field,) if opts.level_field else _LEVEL_KEYS
        self.label_keys = (opts.label_field,) if opts.label_field else _LABEL_KEYS
        self.message_keys = (opts.message_field,) if opts.message_field else _MESSAGE_KEYS
        self.entity_field = opts.entity_field
        self.level_set = frozenset(self.level_keys)
        self.label_set = frozenset(self.label_keys)
        self.message_set = frozenset(self.message_keys)

    def net_fields(self, event: dict[str, Any], flat: dict[str, Any]) -> None:
        """Move the Zeek connection fields of ``flat`` into typed ``event`` columns."""
        if flat.keys().isdisjoint(_NET_KEYS):
            return
        for key, column, conv in _NET_FIELDS:
            value = flat.pop(key, _ABSENT)
            if value is not _ABSENT:
                # Exact ints and text need no call (bool is its own class, so it still goes to _as_int).
                cls = value.__class__
                if cls is int and conv is _as_int:
                    event[column] = value
                elif cls is str and conv is _as_str:
                    event[column] = None if value in _MISSING else value  # _as_str, inlined
                else:
                    event[column] = conv(key, value)

    def finish(self, event: dict[str, Any], flat: dict[str, Any], zeek_path: str | None) -> dict[str, Any]:
        """Fill status, component, level, label, entity, message and attributes. Consumes ``flat``."""
        for column in _COUNT_COLUMNS:
            value = event.get(column)
            if value is not None and value < 0:
                raise ParseError(f"field {column} is negative: {value}")
        # Missing markers ("-", "(empty)", null) under these keys carry nothing: dropped, not kept.
        for key in () if flat.keys().isdisjoint(_STATUS_SET) else _STATUS_KEYS:
            if key in flat:
                value = flat.pop(key)
                if value is not None and not (value.__class__ is str and value in _MISSING):
                    event["status"] = _as_str(key, value)
                    break
        if zeek_path is None:
            path_value = flat.get("_path")
            zeek_path = path_value if isinstance(path_value, str) else None
        component = None
        for key in () if flat.keys().isdisjoint(_COMPONENT_SET) else _COMPONENT_KEYS:
            if key in flat:
                value = flat.pop(key)
                if value is not None and not (value.__class__ is str and value in _MISSING):
                    component = _as_str(key, value)
                    break
        event["component"] = component or zeek_path

        level = None
        for key in () if flat.keys().isdisjoint(self.level_set) else self.level_keys:
            if flat.get(key) is not None:
                level = normalize_level(flat.pop(key))
                break
        if level is None:
            level = "warning" if (zeek_path in _WARNING_ZEEK_PATHS or "note" in flat) else "info"
        event["level"] = level

        label = None
        for key in () if flat.keys().isdisjoint(self.label_set) else self.label_keys:
            if key in flat:
                label = _as_str(key, flat.pop(key))
                break
        event["label"] = label
        for key in () if flat.keys().isdisjoint(_DETAILED_LABEL_SET) else _DETAILED_LABEL_KEYS:
            if key in flat:
                detailed = _as_str(key, flat.pop(key))
                if detailed is not None:
                    flat["detailed_label"] = detailed
                break

        entity: Any = None
        field_name = self.entity_field
        if field_name:
            entity = flat.get(field_name, event.get(field_name))
            if field_name in flat and field_name != "id.orig_h":
                flat.pop(field_name)
        else:
            # HTTP records carry the request's Host header under "host": the server, not the actor.
            http = "uri" in flat or "method" in flat
            keys, flat_set = (
                (_NOTICE_ENTITY_KEYS, _NOTICE_ENTITY_FLAT_SET) if "note" in flat else (_ENTITY_KEYS, _ENTITY_FLAT_SET)
            )
            for key in keys if not flat.keys().isdisjoint(flat_set) else _ENTITY_FROM_EVENT:
                if http and key == "host":
                    continue
                value = event.get("src_addr") if key == "id.orig_h" else flat.get(key)
                if value is not None and value != "" and value != "-":
                    entity = value
                    if key != "id.orig_h":
                        flat.pop(key)
                    break
        event["entity"] = (
            (entity if entity.__class__ is str else str(entity))
            if entity is not None
            else self.opts.default_entity
        )

        message = None
        for key in () if flat.keys().isdisjoint(self.message_set) else self.message_keys:
            value = flat.get(key)
            if value is not None:
                message = _attr(flat.pop(key))
                break
        attributes = {
            k: (v if v.__class__ is str else json.dumps(v)) for k, v in flat.items() if v is not None
        }
        event["attributes"] = attributes
        if message is None and zeek_path == "weird" and isinstance(flat.get("name"), str):
            message = f"weird {flat['name']}"
        if message is None:
            if "src_addr" in event or "dst_addr" in event:
                # The source without its port: the originator's port is ephemeral, new on nearly
                # every connection, and would make every message (and its template match) new;
                # it stays in src_port. The destination's port is the service; an IPv6 address
                # goes in brackets before it (``[2001:db8::1]:53``), as its own colons would
                # otherwise take the port in (and mask a full address as numbers).
                src = event.get("src_addr") or "?"
                dst_addr = event.get("dst_addr") or "?"
                if ":" in dst_addr:
                    dst_addr = f"[{dst_addr}]"
                dst = f"{dst_addr}:{event.get('dst_port') or '?'}"
                message = " ".join(
                    [
                        str(p)
                        for p in (event.get("proto"), event["component"], src, "->", dst, event.get("status"))
                        if p
                    ]
                )
            else:
                message = " ".join(f"{k}={v}" for k, v in list(attributes.items())[:8])
        event["message"] = message
        return event
