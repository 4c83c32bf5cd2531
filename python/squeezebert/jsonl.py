"""JSON text exactly as `sqz infer` writes it, so Python's records and the tool's compare byte
for byte: compact, keys in insertion order, reals with 9 significant digits (jansson's
JSON_REAL_PRECISION(9): "%.9g", a ".0" added to integral values, exponents without "+" or
leading zeros), UTF-8 left as is, control characters as \\u00XX with upper-case hex."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t"}
_ESCAPES = {c: _SHORT_ESCAPES.get(chr(c), f"\\u{c:04X}") for c in range(0x20)}
_ESCAPES.update({ord(k): v for k, v in _SHORT_ESCAPES.items()})


def _string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _real(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError(f"JSON has no {x}")
    s = "%.9g" % x
    mantissa, e, exponent = s.partition("e")
    if not e:
        return s if "." in s else s + ".0"
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def dumps(value: Any) -> str:
    """One JSON value as `sqz infer` would print it (numpy arrays and scalars included)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _real(float(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return "{" + ",".join(_string(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        return dumps(value.tolist())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
