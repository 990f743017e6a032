"""Nested training state <-> (a JSON skeleton, a flat dict of tensors), with no pickle anywhere.

A training state (optimizer / scheduler / averaging state dicts, RNG states, counters) is a tree of
dicts, lists and tuples whose leaves are tensors and plain scalars. `flatten` splits it into a JSON
skeleton, written as a `.json` file, and the tensors, written as a `.safetensors` file; `unflatten`
rebuilds the tree. Neither file format can run code when read.

Skeleton encoding (every JSON object is a tag, so nothing in the data can pose as one):

    None, bool, int, str, finite float   themselves
    non-finite float                     {"float": "nan" | "inf" | "-inf"}
    list                                 a JSON array
    tuple                                {"tuple": [...]}
    dict with only str keys              {"dict": {key: value, ...}}           (order kept)
    any other dict                       {"items": [[key, value], ...]}        (keys: None/bool/int/float/str)
    tensor                               {"tensor": "<name in the tensors dict>"}

So tuples stay tuples (optimizer betas, `random.getstate()`), and int keys stay ints (torch optimizer
state is keyed by parameter index). Numpy scalars become python scalars; anything else (bytes, sets,
arbitrary objects, numpy arrays) is refused with a `TypeError` naming where it sits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_SCALARS = (type(None), bool, int, float, str)
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class StateFormatError(ValueError):
    """A skeleton / tensors pair that does not decode (damaged or not written by `flatten`)."""


def _where(root: str, path: tuple[Any, ...]) -> str:
    return root + "".join(f"[{p!r}]" for p in path)


def _at(path: tuple[Any, ...]) -> str:
    return _where("skeleton", path)


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, np.generic) and not isinstance(value, (np.void, np.object_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, _SCALARS):
        return value
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a training state cannot hold "
        "(tensors, None, bool, int, float, str, and lists / tuples / dicts of them)"
    )


def _key(key: Any, where: str) -> Any:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, float) and not math.isfinite(key):
        raise TypeError(f"{where} has the non-finite dict key {key!r}")
    if not isinstance(key, _SCALARS):
        raise TypeError(f"{where} has a dict key of type {type(key).__name__} (None, bool, int, float, str only)")
    return key


def _tensor_name(path: tuple[Any, ...], taken: Mapping[str, Any]) -> str:
    base = "/".join(str(p) for p in path) or "tensor"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    return name


def _storable(tensor: torch.Tensor, seen: set[tuple[str, int]]) -> torch.Tensor:
    """A CPU, contiguous tensor owning its whole storage, shared with no other stored tensor (safetensors
    refuses shared or non-contiguous tensors; e.g. bitsandbytes keeps one quantization map for all states)."""
    tensor = tensor.detach()
    if type(tensor) is not torch.Tensor:  # parameter / quantized-weight subclasses: their plain data
        tensor = tensor.as_subclass(torch.Tensor)
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    storage = tensor.untyped_storage()
    key = (str(tensor.device), storage.data_ptr())
    if key in seen or storage.nbytes() != tensor.nbytes:
        tensor = tensor.clone()
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
    if tensor.nbytes:
        seen.add(key)
    return tensor


def flatten(state: Any, name: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """`state` -> (JSON-serializable skeleton, {name: CPU tensor}). Tensors are moved to the CPU.

    Raises `TypeError` naming where an unstorable value sits, as `<name>[key][index]...`."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    active: set[int] = set()  # containers on the current path: a cycle would recurse forever

    def encode(value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, torch.Tensor):
            key = _tensor_name(path, tensors)
            tensors[key] = _storable(value, seen)
            return {"tensor": key}
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in active:
                raise TypeError(f"{_where(name, path)} contains itself")
            active.add(id(value))
            try:
                if isinstance(value, Mapping):
                    keys = [_key(k, _where(name, path)) for k in value]
                    entries = [(k, encode(v, (*path, k))) for k, v in zip(keys, value.values())]
                    if all(isinstance(k, str) for k in keys):
                        return {"dict": dict(entries)}
                    return {"items": [[k, v] for k, v in entries]}
                items = [encode(v, (*path, i)) for i, v in enumerate(value)]
                return {"tuple": items} if isinstance(value, tuple) else items
            finally:
                active.discard(id(value))
        return _scalar(value, _where(name, path))

    return encode(state, ()), tensors


def unflatten(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the state `flatten` split; every tensor must be referenced exactly once."""
    used: set[str] = set()

    def decode(node: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(node, list):
            return [decode(v, (*path, i)) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            if isinstance(node, _SCALARS):
                return node
            raise StateFormatError(f"{_at(path)}: unexpected {type(node).__name__} in the skeleton")
        if len(node) != 1:
            raise StateFormatError(f"{_at(path)}: a skeleton object must have one tag, got {sorted(node)[:5]}")
        ((tag, body),) = node.items()
        if tag == "tensor":
            if not isinstance(body, str) or body not in tensors:
                raise StateFormatError(f"{_at(path)}: tensor {body!r} is not in the tensors file")
            if body in used:
                raise StateFormatError(f"{_at(path)}: tensor {body!r} is referenced twice")
            used.add(body)
            return tensors[body]
        if tag == "float" and body in _NON_FINITE:
            return _NON_FINITE[body]
        if tag == "tuple" and isinstance(body, list):
            return tuple(decode(v, (*path, i)) for i, v in enumerate(body))
        if tag == "dict" and isinstance(body, dict):
            return {k: decode(v, (*path, k)) for k, v in body.items()}
        if tag == "items" and isinstance(body, list):
            out: dict[Any, Any] = {}
            for entry in body:
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], _SCALARS)):
                    raise StateFormatError(f"{_at(path)}: a dict entry must be [scalar key, value]")
                key = entry[0]
                if key in out:
                    raise StateFormatError(f"{_at(path)}: duplicate dict key {key!r}")
                out[key] = decode(entry[1], (*path, key))
            return out
        raise StateFormatError(f"{_at(path)}: unknown skeleton tag {tag!r}")

    try:
        state = decode(skeleton, ())
    except RecursionError as err:
        raise StateFormatError("the skeleton is nested too deeply") from err
    unused = sorted(set(tensors) - used)
    if unused:
        raise StateFormatError(
            f"the tensors file holds {len(unused)} tensor(s) the skeleton does not name, e.g. {unused[:5]}"
        )
    return state
