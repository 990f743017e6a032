"""msgpack with numpy arrays: the wire format of the policy server, compatible with `openpi_client.msgpack_numpy`.

An ndarray travels as a msgpack map with binary keys

    {b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": <numpy dtype str, e.g. "<f4">, b"shape": [d0, d1, ...]}

and a numpy scalar (other than float64, which msgpack packs as a plain float) as

    {b"__npgeneric__": True, b"data": <Python value>, b"dtype": <numpy dtype str>}

Decoding checks every array map (dtype kind, shape, byte count) and raises `MessageError` naming the
problem, so a malformed request never reaches the model. Decoded arrays are writable copies that do
not keep the received message alive.

`unpackb(data, limits)` first walks the message's msgpack headers without building anything and
raises `LimitError` (a `MessageError`) naming the first `DecodeLimits` field it exceeds: the length of
one str, bin, ext, array or map, the nesting depth, or the number of objects in the whole message.
The walk costs O(1) per object and stops at the first object past `max_objects`, so a message of
millions of one-byte objects (e.g. `0xdd` + length + `0x90` * n: an array of n empty arrays, each a
Python list once decoded) is refused after reading its headers, never expanded. Bytes payloads
(str, bin) are skipped, not read. The same per-container bounds go to `msgpack.unpackb` as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import numpy as np

# bool, signed/unsigned integers, floats: what observations and actions are made of. Object, void and
# complex arrays are refused in both directions (object arrays could not be rebuilt safely).
ALLOWED_KINDS = frozenset("biuf")
_ARRAY_MARK, _SCALAR_MARK = b"__ndarray__", b"__npgeneric__"


class MessageError(ValueError):
    """A received message is not valid msgpack or holds a malformed array."""


class LimitError(MessageError):
    """A received message exceeds one of the `DecodeLimits` (the message names which)."""


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one received message, checked before any object is built (see the module docstring).

    Lengths count bytes (str, bin, ext payloads), elements (arrays) or key/value pairs (maps);
    `max_depth` counts nested containers (a top-level map of arrays is depth 2); `max_objects` counts
    every value in the message, map keys and containers included.
    """

    max_str_len: int = 64 * 1024
    max_bin_len: int = 32 * 1024 * 1024
    max_array_len: int = 1024
    max_map_len: int = 256
    max_ext_len: int = 0  # the protocol has no extension types
    max_depth: int = 16
    max_objects: int = 8192

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name == "max_ext_len" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"DecodeLimits.{f.name} must be an integer >= {least}, got {value!r}")

    def msgpack_kwargs(self) -> dict[str, int]:
        return {
            "max_str_len": self.max_str_len,
            "max_bin_len": self.max_bin_len,
            "max_array_len": self.max_array_len,
            "max_map_len": self.max_map_len,
            "max_ext_len": self.max_ext_len,
        }


# First bytes of msgpack's fixed-size scalars -> payload bytes after the first byte
# (float 32/64, uint 8..64, int 8..64).
_SCALAR_PAYLOAD = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}


def check_limits(data: bytes | bytearray | memoryview, limits: DecodeLimits) -> None:
    """Walk the msgpack headers of `data`; raise LimitError at the first value beyond `limits`.

    Malformed structure (truncation, the unused byte 0xc1, trailing bytes) is left for msgpack to
    report: the walk just stops there.
    """
    end, pos, objects = len(data), 0, 0
    remaining = [1]  # values still to read in each open container; the bottom entry is the message itself

    def length(size: int) -> int | None:
        nonlocal pos
        if pos + size > end:
            return None
        value = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        return value

    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= end:
            return
        first = data[pos]
        pos += 1
        objects += 1
        if objects > limits.max_objects:
            raise LimitError(f"the message holds more than max_objects={limits.max_objects} values")
        if first <= 0x7F or first >= 0xE0 or first in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
            continue
        if first in _SCALAR_PAYLOAD:
            pos += _SCALAR_PAYLOAD[first]
            continue
        count: int | None
        if 0x80 <= first <= 0x9F or first in (0xDC, 0xDD, 0xDE, 0xDF):  # map or array
            is_map = first <= 0x8F or first >= 0xDE
            if first <= 0x9F:
                count = first & 0x0F
            else:
                count = length(2 if first in (0xDC, 0xDE) else 4)
                if count is None:
                    return
            name, limit = ("map", limits.max_map_len) if is_map else ("array", limits.max_array_len)
            if count > limit:
                unit = "entries" if is_map else "elements"
                raise LimitError(f"{name} of {count} {unit} exceeds max_{name}_len={limit}")
            if len(remaining) > limits.max_depth:
                raise LimitError(f"containers nested deeper than max_depth={limits.max_depth}")
            if count:
                remaining.append(2 * count if is_map else count)
            continue
        if 0xA0 <= first <= 0xBF or 0xD9 <= first <= 0xDB:  # str
            count = first & 0x1F if first <= 0xBF else length(1 << (first - 0xD9))
            name, limit = "str", limits.max_str_len
        elif 0xC4 <= first <= 0xC6:  # bin
            count, name, limit = length(1 << (first - 0xC4)), "bin", limits.max_bin_len
        elif 0xC7 <= first <= 0xC9 or 0xD4 <= first <= 0xD8:  # ext (one type byte after the length)
            count = length(1 << (first - 0xC7)) if first <= 0xC9 else 1 << (first - 0xD4)
            name, limit = "ext", limits.max_ext_len
            pos += 1
        else:  # 0xc1: never used in msgpack
            return
        if count is None:
            return
        if count > limit:
            raise LimitError(f"{name} of {count} bytes exceeds max_{name}_len={limit}")
        pos += count


def _check_kind(dtype: np.dtype, what: str) -> None:
    if dtype.kind not in ALLOWED_KINDS:
        raise MessageError(
            f"{what} has unsupported dtype {dtype.str!r} (kind {dtype.kind!r}); "
            "only bool, integer and float arrays travel"
        )


def _encode(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars -> their marked maps."""
    if isinstance(obj, np.ndarray):
        _check_kind(obj.dtype, "array")
        return {_ARRAY_MARK: True, b"data": obj.tobytes(order="C"), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_kind(obj.dtype, "numpy scalar")
        return {_SCALAR_MARK: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__} with msgpack")


def _field(obj: dict, name: str) -> Any:
    """A field of an array map; accepts binary (what the packers write) and text keys."""
    for key in (name.encode(), name):
        if key in obj:
            return obj[key]
    raise MessageError(f"array map lacks its {name!r} field")


def _dtype(value: Any, what: str) -> np.dtype:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str):
        raise MessageError(f"{what} dtype must be a string like '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(text)
    except TypeError as err:
        raise MessageError(f"{what} has an unknown dtype {text!r}") from err
    _check_kind(dtype, what)
    return dtype


def _decode_array(obj: dict) -> np.ndarray:
    dtype = _dtype(_field(obj, "dtype"), "array")
    shape = _field(obj, "shape")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise MessageError(f"array shape must be a list of non-negative integers, got {shape!r}")
    data = _field(obj, "data")
    if not isinstance(data, bytes):
        raise MessageError(f"array data must be binary, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise MessageError(
            f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, the message holds {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # writable, detached from the message


def _decode_scalar(obj: dict) -> np.generic:
    dtype = _dtype(_field(obj, "dtype"), "numpy scalar")
    value = _field(obj, "data")
    if isinstance(value, (bytes, str, list, dict)) or value is None:
        raise MessageError(f"numpy scalar data must be a number, got {type(value).__name__}")
    try:
        return dtype.type(value)
    except (OverflowError, ValueError) as err:
        raise MessageError(f"numpy scalar {value!r} does not fit dtype {dtype.str}: {err}") from err


def _decode_hook(obj: dict) -> Any:
    """msgpack `object_hook`: marked maps -> numpy values, other maps unchanged."""
    if _ARRAY_MARK in obj or "__ndarray__" in obj:
        return _decode_array(obj)
    if _SCALAR_MARK in obj or "__npgeneric__" in obj:
        return _decode_scalar(obj)
    return obj


def packb(obj: Any) -> bytes:
    """Python/numpy object -> msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes, limits: DecodeLimits | None = None) -> Any:
    """msgpack bytes -> Python/numpy object; raises MessageError on anything malformed, LimitError
    (before decoding) on a message beyond `limits` (None: msgpack's own bounds, the message's length)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected a binary msgpack message, got {type(data).__name__}")
    bounds: dict[str, int] = {}
    if limits is not None:
        check_limits(data, limits)
        bounds = limits.msgpack_kwargs()
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=True, **bounds)
    except MessageError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as err:
        raise MessageError(f"not a valid msgpack message: {type(err).__name__}: {err}") from err
