"""msgpack with numpy arrays: the wire format of the policy server, compatible with `openpi_client.msgpack_numpy`.

An ndarray travels as a msgpack map with binary keys

    {b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": <numpy dtype str, e.g. "<f4">, b"shape": [d0, d1, ...]}

and a numpy scalar (other than float64, which msgpack packs as a plain float) as

    {b"__npgeneric__": True, b"data": <Python value>, b"dtype": <numpy dtype str>}

Decoding checks every array map (dtype kind, shape, byte count) and raises `MessageError` naming the
problem, so a malformed request never reaches the model. Decoded arrays are writable copies that do
not keep the received message alive.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

# bool, signed/unsigned integers, floats: what observations and actions are made of. Object, void and
# complex arrays are refused in both directions (object arrays could not be rebuilt safely).
ALLOWED_KINDS = frozenset("biuf")
_ARRAY_MARK, _SCALAR_MARK = b"__ndarray__", b"__npgeneric__"


class MessageError(ValueError):
    """A received message is not valid msgpack or holds a malformed array."""


def _check_kind(dtype: np.dtype, what: str) -> None:
    if dtype.kind not in ALLOWED_KINDS:
        raise MessageError(f"{what} has unsupported dtype {dtype.str!r} (kind {dtype.kind!r}); "
                           "only bool, integer and float arrays travel")


def _encode(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars -> their marked maps."""
    if isinstance(obj, np.ndarray):
        _check_kind(obj.dtype, "array")
        return {_ARRAY_MARK: True, b"data": obj.tobytes(order="C"), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
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
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MessageError(f"array shape must be a list of non-negative integers, got {shape!r}")
    data = _field(obj, "data")
    if not isinstance(data, bytes):
        raise MessageError(f"array data must be binary, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise MessageError(f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, "
                           f"the message holds {len(data)}")
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


def unpackb(data: bytes) -> Any:
    """msgpack bytes -> Python/numpy object; raises MessageError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected a binary msgpack message, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=True)
    except MessageError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as err:
        raise MessageError(f"not a valid msgpack message: {type(err).__name__}: {err}") from err
