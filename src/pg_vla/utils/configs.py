"""Typed configs from Hydra/JSON dicts."""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")
_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def dataclass_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """Build dataclass `cls` from `data`, ignoring Hydra's `_target_`.

    Unknown keys are an error naming them; so is a value of the wrong kind for a field annotated with a
    scalar type (int, float, bool, str, or a union of them with None), e.g. `n_updates=abc`, which is
    named itself rather than in whatever config derives from it later."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known - {"_target_"})
    if unknown:
        raise ValueError(f"unknown {what} config keys: {unknown}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name in known:
            _check_scalar(name, value, hints[name], what)
    return cls(**{k: v for k, v in data.items() if k in known})


def _check_scalar(name: str, value: Any, annotation: Any, what: str) -> None:
    """ValueError when `annotation` is a scalar type (or a union of them) that `value` does not fit."""
    options = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    if not all(option in _SCALARS or option is type(None) for option in options):
        return  # containers, nested configs, Any: checked where they are built
    if value is None and type(None) in options:
        return
    for option in options:
        if option is bool and isinstance(value, bool):
            return
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option is str and isinstance(value, str):
            return
    expected = " or ".join(_SCALARS.get(o, "null") for o in options)
    raise ValueError(f"{what} config key {name!r} must be {expected}, got {value!r} ({type(value).__name__})")
