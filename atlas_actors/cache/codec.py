"""The L2 serializer: rows to bytes and back, with no way to run code.

diskcache pickles by default, and unpickling a file from a directory someone else can
write to runs their code. Results are only ever None, int, float, str and bytes, so
JSON does (bytes tagged and base64-encoded); anything that does not decode to exactly
that shape is rejected, and the caller treats it as a miss.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

__all__ = ["CodecError", "decode", "encode"]

_FORMAT = 1


class CodecError(ValueError):
    """An L2 value that is not a result this codec wrote."""


def _value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii")}
    if value is None or isinstance(value, int | float | str):
        return value
    raise CodecError(f"cannot store a {type(value).__name__} in the cache")


def encode(document: dict[str, Any], rows: list[tuple[Any, ...]]) -> bytes:
    """Serialize ``document`` (JSON-safe metadata) and ``rows`` (SQLite values)."""
    payload = {"f": _FORMAT, "d": document, "r": [[_value(v) for v in row] for row in rows]}
    return zlib.compress(json.dumps(payload, separators=(",", ":")).encode("utf-8"), 1)


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b"} or not isinstance(value["b"], str):
            raise CodecError("unexpected object in a cached row")
        return base64.b64decode(value["b"], validate=True)
    if value is None or isinstance(value, int | float | str):
        return value
    raise CodecError("unexpected value in a cached row")


def decode(blob: bytes) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Inverse of :func:`encode`; raises :class:`CodecError` on anything else."""
    try:
        payload = json.loads(zlib.decompress(blob).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError) as error:
        raise CodecError(f"unreadable cache entry: {error}") from None
    if not isinstance(payload, dict) or payload.get("f") != _FORMAT:
        raise CodecError("cache entry of an unknown format")
    document, rows = payload.get("d"), payload.get("r")
    if not isinstance(document, dict) or not isinstance(rows, list):
        raise CodecError("malformed cache entry")
    restored = []
    for row in rows:
        if not isinstance(row, list):
            raise CodecError("malformed cached row")
        restored.append(tuple(_restore(v) for v in row))
    return document, restored
