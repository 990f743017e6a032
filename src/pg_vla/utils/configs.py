"""Typed configs from Hydra/JSON dicts."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """Build dataclass `cls` from `data`, ignoring Hydra's `_target_`; unknown keys are an error naming them."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known - {"_target_"})
    if unknown:
        raise ValueError(f"unknown {what} config keys: {unknown}")
    return cls(**{k: v for k, v in data.items() if k in known})
