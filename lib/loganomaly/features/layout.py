"""How ``sequences.features`` is stored, and the one way every reader turns it back into windows.

A window is a ``[n_steps, n_features]`` float32 matrix (row-major: step after step). Two layouts
exist on disk:

* ``binary`` (what featurize writes into a new table): each row one little-endian float32 tensor
  of ``n_steps * n_features * 4`` bytes. An Arrow batch of such rows is one contiguous values
  buffer plus offsets, so a reader's ``[N, T, F]`` array is a view of the buffer: no per-row
  object, no copy. ``bench/score.py`` measured this layout faster through Spark's Arrow transport
  than the list one (its no-op ``mapInArrow`` floor 1.26x, the scoring UDF 1.23x, on a quiet
  machine; README "Scoring speed").
* ``list`` (``array<float>``, what every table written before carries): the list's values are
  one float32 buffer too, but Spark's transport and Parquet's repetition levels cost more per
  value. Tables in this layout keep it (featurize never changes the layout of an existing table:
  see :mod:`loganomaly.features.stage`) and every reader reads both.

The shape is not in the bytes: each row carries it (``n_steps``, ``n_features``), as before.
Readers check it: a row of the wrong length is an error, never a silent reshape.

For SQL users (``loganomaly sql``), :func:`features_array_sql` is a Spark SQL expression that
decodes the binary column back into ``array<float>`` (pure SQL functions, so it runs on any Spark);
in Python, ``np.frombuffer(row.features, "<f4").reshape(row.n_steps, row.n_features)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from loganomaly.errors import StageInputError

Layout = Literal["binary", "list"]

#: Spark SQL type of ``features`` per layout.
LAYOUT_TYPES: dict[str, str] = {"binary": "binary", "list": "array<float>"}
#: What featurize writes into a ``sequences`` table that does not exist yet.
NEW_LAYOUT: Layout = "binary"

#: Arrow's ``binary`` has 32-bit offsets: a chunk holds less than 2 GiB of tensors.
_MAX_CHUNK_BYTES = 2**31 - 1

__all__ = ["LAYOUT_TYPES", "NEW_LAYOUT", "Layout", "decode_windows", "encode_windows", "features_array_sql",
           "layout_of", "window_bytes"]


def layout_of(spark_type: object) -> Layout:
    """The layout of a ``features`` column from its Spark type (a ``DataType`` or its DDL string).

    Raises:
        StageInputError: a type that is neither layout.
    """
    text = spark_type if isinstance(spark_type, str) else getattr(spark_type, "simpleString", lambda: "")()
    text = str(text).replace(" ", "").lower()
    if text == "binary":
        return "binary"
    if text in ("array<float>", "array<double>"):
        return "list"
    raise StageInputError(f"sequences.features of type {text or spark_type!r} is neither binary float32 tensors "
                          "nor array<float>")


def window_bytes(window: np.ndarray) -> bytes:
    """One window as its stored bytes: little-endian float32, row-major."""
    return np.ascontiguousarray(window, dtype="<f4").tobytes()


def encode_windows(x: np.ndarray) -> pa.ChunkedArray:
    """Windows ``[N, T, F]`` as a ``binary`` column, built over one float32 buffer (no per-row bytes).

    Chunked so that no chunk's offsets pass Arrow's 2 GiB limit of ``binary``.

    Example:
        >>> encode_windows(np.zeros((2, 3, 4), np.float32)).type
        DataType(binary)
    """
    if x.ndim != 3:
        raise StageInputError(f"windows must have shape [N, T, F], got {x.shape}")
    n, steps, feats = x.shape
    data = np.ascontiguousarray(x, dtype="<f4").reshape(n, -1)
    width = steps * feats * 4
    per_chunk = max(1, _MAX_CHUNK_BYTES // max(width, 1))
    chunks = []
    for lo in range(0, n, per_chunk):
        part = data[lo : lo + per_chunk]
        offsets = np.arange(len(part) + 1, dtype=np.int32) * width
        chunks.append(pa.Array.from_buffers(pa.binary(), len(part), [None, pa.py_buffer(offsets), pa.py_buffer(part)]))
    return pa.chunked_array(chunks, pa.binary())


def decode_windows(values: pa.Array | pa.ChunkedArray, n_steps: int, n_features: int) -> np.ndarray:
    """A ``features`` column (either layout) as ``[N, T, F]`` float32, a view of its buffers where it can be.

    Binary rows (``binary``, ``large_binary``, or ``fixed_size_binary`` of the row's width) are
    read in place; ``array<float>`` rows are their values buffer reshaped (``array<double>`` is
    converted). Every row must hold exactly ``n_steps * n_features`` values.

    Raises:
        StageInputError: a null row, a row of another length, or a column of another type.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if values.null_count:
        raise StageInputError(f"{values.null_count} windows without features")
    if getattr(pa.types, "is_binary_view", None) is not None and pa.types.is_binary_view(values.type):
        values = values.cast(pa.large_binary())  # a reader's view type (one copy): read as offsets + buffer
    n, row = len(values), n_steps * n_features
    kind = values.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        width = row * 4
        if pa.types.is_fixed_size_binary(kind):
            if kind.byte_width != width:
                raise StageInputError(f"features of {kind.byte_width} bytes for windows of {n_steps} x {n_features}")
            start = values.offset * width
            data = values.buffers()[1]
        else:
            large = pa.types.is_large_binary(kind)
            offsets = np.frombuffer(values.buffers()[1], np.int64 if large else np.int32, count=n + 1,
                                    offset=values.offset * (8 if large else 4))
            if n and (offsets[-1] - offsets[0] != n * width or (np.diff(offsets) != width).any()):
                raise StageInputError(f"features rows are not all {width} bytes (windows of {n_steps} x {n_features})")
            start = int(offsets[0]) if n else 0
            data = values.buffers()[2]
        if n == 0 or data is None:
            return np.zeros((0, n_steps, n_features), np.float32)
        return np.frombuffer(data, np.dtype("<f4"), count=n * row, offset=start).reshape(n, n_steps, n_features)
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise StageInputError(f"features of type {kind} are neither float32 tensors nor a list of floats")
    if not pa.types.is_fixed_size_list(kind) and n:
        lengths = np.diff(np.frombuffer(values.buffers()[1], np.int64 if pa.types.is_large_list(kind) else np.int32,
                                        count=n + 1, offset=values.offset * (8 if pa.types.is_large_list(kind) else 4)))
        if (lengths != row).any():
            bad = sorted(set(lengths[lengths != row].tolist()))[:5]
            raise StageInputError(f"features of {bad} values, expected n_steps * n_features = {row} "
                                  f"(windows of {n_steps} x {n_features})")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    if flat.size != n * row:
        raise StageInputError(f"features of {flat.size} values for {n} windows of {n_steps} x {n_features}")
    return flat.astype(np.float32, copy=False).reshape(n, n_steps, n_features)


def features_array_sql(column: str = "features", n_values: str = "n_steps * n_features") -> str:
    """A Spark SQL expression turning a binary ``features`` column into ``array<float>`` (row-major).

    Built from SQL functions only (``substring``, ``hex``, ``conv``, bit arithmetic), so it runs
    in ``loganomaly sql`` and on any Spark, with no UDF to install: each 4-byte little-endian
    word is read as an unsigned integer and its IEEE 754 sign, exponent and mantissa are put
    together (subnormals, infinities and NaN included). Meant for looking at a few windows; the
    readers in the library use :func:`decode_windows`.

    Example:
        >>> f"SELECT entity, window_start, {features_array_sql()} AS features FROM sequences LIMIT 5"
    """
    word = (f"CAST(conv(regexp_replace(hex(substring({column}, 4 * i + 1, 4)), '(..)(..)(..)(..)', '$4$3$2$1'), "
            "16, 10) AS BIGINT)")
    value = (
        "CAST(IF(u >= 2147483648, -1.0D, 1.0D) * "
        "CASE WHEN shiftright(u, 23) & 255 = 0 THEN (u & 8388607) * pow(2.0D, -149) "
        "WHEN shiftright(u, 23) & 255 = 255 THEN IF((u & 8388607) = 0, CAST('Infinity' AS DOUBLE), "
        "CAST('NaN' AS DOUBLE)) "
        "ELSE ((u & 8388607) + 8388608) * pow(2.0D, (shiftright(u, 23) & 255) - 150) END AS FLOAT)"
    )
    return f"transform(transform(sequence(0, {n_values} - 1), i -> {word}), u -> {value})"
