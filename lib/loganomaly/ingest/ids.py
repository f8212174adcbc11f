"""Event ids: the stable id of the line ``line_no`` of one generation of one file (Spark-free).

An id names a line, not its content: the same line of the same generation of a file gets the same
id in every run, so a file read again after it grew replaces its rows with the same ids, and
sessions (``event_ids``) keep pointing at the lines they hold.

Two schemes, recorded per generation in the ``ingested_files`` ledger (``id_scheme``), so a
generation keeps the scheme it was first loaded with:

* :data:`LEGACY` (0, ledgers written before the column): 24 hex characters of a blake2b hash of
  ``path NUL line_no`` (generation 0) or ``path NUL generation NUL line_no``. Every line costs a
  hash in Python, about 0.35 us, a sixth of a CSV line's whole parsing task, and the ids do not
  compress (24 random bytes, half of what a CSV event writes to Parquet).
* :data:`FILE_LINE` (1, every generation loaded since): :data:`KEY_CHARS` hex characters of a
  blake2b hash of ``path NUL generation`` (the *file key*, once per file), then the line number in
  :data:`LINE_CHARS` lowercase hex digits (more for a line number of 2**40 and over). Built for a
  whole batch in NumPy (about 0.04 us a line), and the file's rows share the key, which Parquet's
  compression then stores about once. Two file generations collide only if their 64-bit keys do
  (about 3e-6 for ten million file generations in one lake); within one, line numbers differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

#: Ids of lakes written before the scheme was recorded: one blake2b hash per line.
LEGACY = 0
#: File key and hex line number (the module docstring).
FILE_LINE = 1
#: The scheme a new generation of a file is loaded with.
CURRENT = FILE_LINE
SCHEMES = (LEGACY, FILE_LINE)

#: Hex characters of the file key (64 bits) and the minimum of the line number (40 bits).
KEY_CHARS = 16
LINE_CHARS = 10
_WIDE = 1 << (4 * LINE_CHARS)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_SHIFTS = np.arange(4 * (LINE_CHARS - 1), -1, -4, dtype=np.int64)


def legacy_id(path: str, line_no: int, generation: int = 0) -> str:
    """A :data:`LEGACY` id (the key of generation 0 holds no generation)."""
    key = f"{path}\x00{line_no}" if generation == 0 else f"{path}\x00{generation}\x00{line_no}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class IdKey:
    """How the lines of one generation of one file are named: ``path``, ``generation`` and the
    generation's ``scheme`` (:data:`SCHEMES`)."""

    path: str
    generation: int = 0
    scheme: int = CURRENT

    @classmethod
    def of(cls, path: str, ids: IdKey | int) -> IdKey:
        """``ids`` itself, or for a generation number that generation's key in the current scheme
        (what callers that know only the generation, tests and benches, pass)."""
        return ids if isinstance(ids, IdKey) else cls(path, ids)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown event id scheme {self.scheme}; known: {SCHEMES}")

    @cached_property
    def file_key(self) -> str:
        """The :data:`FILE_LINE` prefix of this generation's ids."""
        key = f"{self.path}\x00{self.generation}".encode()
        return hashlib.blake2b(key, digest_size=KEY_CHARS // 2).hexdigest()

    def one(self, line_no: int) -> str:
        """The id of line ``line_no``."""
        if self.scheme == LEGACY:
            return legacy_id(self.path, line_no, self.generation)
        return f"{self.file_key}{line_no:0{LINE_CHARS}x}"

    def batch(self, lines: Sequence[int] | np.ndarray, is_event: Sequence[bool] | None = None) -> pa.Array:
        """The ids of ``lines`` as an Arrow string array, null where ``is_event`` is False
        (quarantined lines have no event id); equal to :meth:`one` line by line."""
        n = len(lines)
        numbers = np.asarray(lines, dtype=np.int64)
        width = KEY_CHARS + LINE_CHARS
        wide = n and (numbers.min() < 0 or numbers.max() >= _WIDE)
        if self.scheme == LEGACY or wide or n * width >= 1 << 31:
            # One hash a line (legacy), a line number wider than the fixed digits, or more text
            # than 32-bit offsets hold: per line.
            mask = [True] * n if is_event is None else is_event
            return pa.array([self.one(int(x)) if e else None for x, e in zip(numbers, mask, strict=True)], pa.string())
        chars = np.empty((n, width), np.uint8)
        chars[:, :KEY_CHARS] = np.frombuffer(self.file_key.encode(), np.uint8)
        chars[:, KEY_CHARS:] = _HEX[(numbers[:, None] >> _SHIFTS) & 0xF]
        offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
        validity = None
        if is_event is not None:
            events = np.asarray(is_event, dtype=bool)
            if len(events) != n:
                raise ValueError(f"{n} line numbers but {len(events)} event flags")
            if not events.all():
                validity = pa.py_buffer(np.packbits(events, bitorder="little"))
        nulls = -1 if validity is not None else 0
        return pa.Array.from_buffers(
            pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(chars)], null_count=nulls
        )
