"""Normalization statistics and the normalize / unnormalize pair, without tensorflow.

The statistics JSON (one per dataset; `config/bridge_statistics.json` and `config/fractal_statistics.json` are the published ones) holds

    {"action":  {"mean": [...], "std": [...], "min": [...], "max": [...], "p01": [...], "p99": [...]},
     "proprio": {... same keys ...},
     "num_transitions": int, "num_trajectories": int}

Two normalizations:
    bounds    x -> 2 (x - p01) / (p99 - p01) - 1, clipped to [-1, 1]   (pi0 / open-pi-zero default)
    gaussian  x -> (x - mean) / std

A per-dimension mask leaves some dimensions as they are: by default the gripper action keeps its
0 (closed) .. 1 (open) convention. Dimensions whose bounds coincide (p99 == p01, e.g. a constant
joint) map to 0 and unnormalize back to that constant. Training, evaluation and serving read the
statistics through this module with plain JSON, so none of them needs tensorflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

NormalizationMode = Literal["bounds", "gaussian"]
STAT_KEYS = ("mean", "std", "min", "max", "p01", "p99")
EPS = 1e-8


@dataclass
class ArrayStatistics:
    """Per-dimension statistics of one quantity (action or proprio); each field has shape (D,)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    p01: np.ndarray
    p99: np.ndarray

    @classmethod
    def from_values(cls, values: np.ndarray) -> "ArrayStatistics":
        """values (N, D) -> statistics over N (float64 accumulation)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(f"statistics need a non-empty (N, D) array, got shape {values.shape}")
        return cls(mean=values.mean(0), std=values.std(0), min=values.min(0), max=values.max(0),
                   p01=np.quantile(values, 0.01, axis=0), p99=np.quantile(values, 0.99, axis=0))

    @property
    def dim(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {key: [float(v) for v in getattr(self, key)] for key in STAT_KEYS}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ArrayStatistics":
        missing = [key for key in STAT_KEYS if key not in data]
        if missing:
            raise ValueError(f"{where}: statistics lack {missing}")
        arrays = {key: np.asarray(data[key], dtype=np.float64) for key in STAT_KEYS}
        dims = {key: a.shape for key, a in arrays.items()}
        if len(set(dims.values())) != 1 or arrays["mean"].ndim != 1:
            raise ValueError(f"{where}: statistics have inconsistent shapes {dims}")
        return cls(**arrays)


@dataclass
class DatasetStatistics:
    action: ArrayStatistics
    proprio: ArrayStatistics
    num_transitions: int
    num_trajectories: int
    extra: dict = field(default_factory=dict)  # e.g. the dataset config hash the file was computed for

    def to_dict(self) -> dict:
        return {"action": self.action.to_dict(), "proprio": self.proprio.to_dict(),
                "num_transitions": int(self.num_transitions), "num_trajectories": int(self.num_trajectories),
                **self.extra}

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically (a reader never sees a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DatasetStatistics":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"normalization statistics {path} do not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"normalization statistics {path} are not valid JSON: {err}") from err
        for key in ("action", "proprio", "num_transitions", "num_trajectories"):
            if key not in data:
                raise ValueError(f"normalization statistics {path} lack the key {key!r}")
        extra = {k: v for k, v in data.items() if k not in ("action", "proprio", "num_transitions", "num_trajectories")}
        return cls(action=ArrayStatistics.from_dict(data["action"], f"{path} action"),
                   proprio=ArrayStatistics.from_dict(data["proprio"], f"{path} proprio"),
                   num_transitions=int(data["num_transitions"]), num_trajectories=int(data["num_trajectories"]),
                   extra=extra)


class Normalizer:
    """normalize / unnormalize for one array kind; works on numpy arrays and torch tensors (..., D)."""

    def __init__(self, stats: ArrayStatistics, mode: NormalizationMode = "bounds", mask: list[bool] | None = None):
        if mode not in ("bounds", "gaussian"):
            raise ValueError(f"unknown normalization {mode!r} (bounds or gaussian)")
        mask = [True] * stats.dim if mask is None else list(mask)
        if len(mask) != stats.dim:
            raise ValueError(f"normalization mask has {len(mask)} entries for {stats.dim} dimensions")
        self.mode = mode
        self.mask = np.asarray(mask, dtype=bool)
        if mode == "bounds":
            self.low, self.high = stats.p01, stats.p99
            self.degenerate = (self.high - self.low) < EPS
        else:
            self.low, self.high = stats.mean, stats.std  # centre, scale
            self.degenerate = self.high < EPS

    def _params(self, like):
        if isinstance(like, torch.Tensor):
            to = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
            return to(self.low), to(self.high), to(self.mask), to(self.degenerate), torch.clamp, torch.where
        return self.low, self.high, self.mask, self.degenerate, np.clip, np.where

    def _check(self, x) -> None:
        if x.shape[-1] != len(self.mask):
            raise ValueError(f"expected last dimension {len(self.mask)}, got shape {tuple(x.shape)}")

    def normalize(self, x):
        self._check(x)
        low, high, mask, degenerate, clip, where = self._params(x)
        if self.mode == "bounds":
            y = clip(2.0 * (x - low) / where(degenerate > 0, 1.0, high - low) - 1.0, -1.0, 1.0)
        else:
            y = (x - low) / where(degenerate > 0, 1.0, high)
        y = where(degenerate > 0, 0.0 * x, y)
        return where(mask > 0, y, x)

    def unnormalize(self, y):
        self._check(y)
        low, high, mask, degenerate, clip, where = self._params(y)
        if self.mode == "bounds":
            x = (clip(y, -1.0, 1.0) + 1.0) / 2.0 * (high - low) + low
        else:
            x = y * high + low
        return where(mask > 0, x, y)


def default_action_mask(action_dim: int, gripper_dims: int = 1) -> list[bool]:
    """Normalize every action dimension but the trailing gripper (0..1 stays as it is)."""
    return [True] * (action_dim - gripper_dims) + [False] * gripper_dims
