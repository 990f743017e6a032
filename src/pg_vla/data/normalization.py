"""Normalization statistics and the normalize / unnormalize pair, without tensorflow.

The statistics JSON (one per dataset; `config/bridge_statistics.json` and `config/fractal_statistics.json` are the
published ones) holds

    {"action":  {"mean": [...], "std": [...], "min": [...], "max": [...], "p01": [...], "p99": [...]},
     "proprio": {... same keys ...},
     "num_transitions": int, "num_trajectories": int}

Normalization modes (`data.normalization`), each an affine map per dimension with its exact inverse:

    mode       normalize x -> y                                    unnormalize y -> x
    bounds     2 (x - p01) / (p99 - p01) - 1, clipped to [-1, 1]   (clip(y, -1, 1) + 1) / 2 (p99 - p01) + p01
    mean_std   (x - mean) / (std + 1e-6)                           y (std + 1e-6) + mean                  openpi pi0
    quantile   2 (x - p01) / (p99 - p01 + 1e-6) - 1, not clipped   (y + 1) / 2 (p99 - p01 + 1e-6) + p01   openpi pi0.5
    gaussian   another name of mean_std (accepted in older run configs)

All three are one table per statistics (`NormalizationParams`): y = (x - offset) * gain + bias,
clipped to [-1, 1] when the mode clips, and x = (y - bias) * scale + offset (y clipped first when the
mode clips), with offset p01 or mean, bias -1 or 0, gain 2 / (p99 - p01 [+ 1e-6]) or 1 / (std + 1e-6)
and scale its reciprocal. numpy and torch (`Normalizer`, in the input's float type) and tensorflow
(`pg_vla.data.rlds.trajectory.normalize_tf`, float32) evaluate that same table. Constant dimensions:
under `bounds` a dimension whose bounds coincide (p99 - p01 < 1e-8) gets gain 0 and bias 0, so it
maps to 0 and back to its constant; under `mean_std` and `quantile` the 1e-6 keeps the map finite
(the constant maps to 0 under mean_std and to -1 under quantile, as in openpi) and the inverse holds.

A per-dimension mask leaves some dimensions as they are: by default the gripper action keeps its
0 (closed) .. 1 (open) convention. Training, evaluation and serving read the statistics through this
module with plain JSON, so none of them needs tensorflow.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

NormalizationMode = Literal["bounds", "mean_std", "quantile", "gaussian"]
NORMALIZATIONS = ("bounds", "mean_std", "quantile")
ALIASES = {"gaussian": "mean_std"}
STAT_KEYS = ("mean", "std", "min", "max", "p01", "p99")
EPS = 1e-8  # bounds: narrower ranges count as constant
OPENPI_EPS = 1e-6  # mean_std and quantile: added to the denominator (openpi's transforms.Normalize)


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
        if not np.isfinite(values).all():
            row, dim = (int(i) for i in np.argwhere(~np.isfinite(values))[0])
            raise ValueError(
                f"statistics over non-finite values: value {values[row, dim]} at row {row}, dimension {dim}"
            )
        return cls(
            mean=values.mean(0),
            std=values.std(0),
            min=values.min(0),
            max=values.max(0),
            p01=np.quantile(values, 0.01, axis=0),
            p99=np.quantile(values, 0.99, axis=0),
        )

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
    scene_state: ArrayStatistics | None = None  # datasets with a privileged scene state (simulation) only

    def to_dict(self) -> dict:
        return {
            "action": self.action.to_dict(),
            "proprio": self.proprio.to_dict(),
            **({"scene_state": self.scene_state.to_dict()} if self.scene_state is not None else {}),
            "num_transitions": int(self.num_transitions),
            "num_trajectories": int(self.num_trajectories),
            **self.extra,
        }

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically: a reader never sees a half-written file, and writers never share a
        temporary file, even on several hosts writing to one shared folder (its name holds the host name,
        the process id and a random part, and it is created exclusively) before the rename into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{host}-{os.getpid()}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=1))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # readable like any written file (mkstemp makes it private)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
        known = ("action", "proprio", "scene_state", "num_transitions", "num_trajectories")
        extra = {k: v for k, v in data.items() if k not in known}
        scene = data.get("scene_state")
        return cls(
            action=ArrayStatistics.from_dict(data["action"], f"{path} action"),
            proprio=ArrayStatistics.from_dict(data["proprio"], f"{path} proprio"),
            num_transitions=int(data["num_transitions"]),
            num_trajectories=int(data["num_trajectories"]),
            extra=extra,
            scene_state=ArrayStatistics.from_dict(scene, f"{path} scene_state") if scene is not None else None,
        )


def normalization_mode(mode: str) -> str:
    """The canonical name of a `data.normalization` value (aliases resolved); ValueError names the accepted ones."""
    if mode in NORMALIZATIONS:
        return mode
    if mode in ALIASES:
        return ALIASES[mode]
    accepted = ", ".join([*NORMALIZATIONS, *(f"{a} (= {c})" for a, c in ALIASES.items())])
    raise ValueError(f"unknown normalization {mode!r}; accepted: {accepted}")


@dataclass(frozen=True)
class NormalizationParams:
    """The affine table of one mode and statistics; every field but `clip` has shape (D,).

    normalize    y = (x - offset) * gain + bias, clipped to [-1, 1] if `clip`; x where `mask` is False
    unnormalize  x = (y - bias) * scale + offset (y clipped to [-1, 1] first if `clip`); y where `mask` is False

    Subtracting the statistic itself (p01 or mean) first keeps openpi's order of operations, so a
    constant dimension lands exactly on -1 (quantile) or 0 (mean_std) in float32 too.
    """

    offset: np.ndarray  # float64: p01 (bounds, quantile) or mean (mean_std)
    gain: np.ndarray  # float64: 2 / (p99 - p01 [+ 1e-6]) or 1 / (std + 1e-6); 0 on a constant bounds dimension
    bias: np.ndarray  # float64: -1 (bounds, quantile) or 0 (mean_std, a constant bounds dimension)
    scale: np.ndarray  # float64: 1 / gain, (p99 - p01) / 2 on a constant bounds dimension
    mask: np.ndarray  # bool, True where the dimension is normalized
    clip: bool

    @classmethod
    def from_statistics(
        cls, stats: ArrayStatistics, mode: str, mask: list[bool] | None = None
    ) -> "NormalizationParams":
        mode = normalization_mode(mode)
        mask = [True] * stats.dim if mask is None else list(mask)
        if len(mask) != stats.dim:
            raise ValueError(f"normalization mask has {len(mask)} entries for {stats.dim} dimensions")
        if mode == "mean_std":
            offset, scale, bias = stats.mean, stats.std + OPENPI_EPS, 0.0
            gain = 1.0 / scale
        else:
            eps = OPENPI_EPS if mode == "quantile" else 0.0
            constant = (stats.p99 - stats.p01) < EPS if mode == "bounds" else np.zeros(stats.dim, bool)
            offset, scale, bias = stats.p01, (stats.p99 - stats.p01 + eps) / 2.0, np.where(constant, 0.0, -1.0)
            gain = np.where(constant, 0.0, 2.0 / np.where(constant, 1.0, stats.p99 - stats.p01 + eps))
        f64 = lambda a: np.broadcast_to(np.asarray(a, np.float64), (stats.dim,)).copy()  # noqa: E731
        return cls(
            offset=f64(offset),
            gain=f64(gain),
            bias=f64(bias),
            scale=f64(scale),
            mask=np.asarray(mask, bool),
            clip=mode == "bounds",
        )


class Normalizer:
    """normalize / unnormalize for one array kind: numpy arrays and torch tensors (..., D).

    Floating inputs are computed in their own dtype (float32 batches in float32, like the tf pipeline);
    other inputs in float64.
    """

    def __init__(self, stats: ArrayStatistics, mode: NormalizationMode = "bounds", mask: list[bool] | None = None):
        self.mode = normalization_mode(mode)
        self.params = NormalizationParams.from_statistics(stats, self.mode, mask)
        self.mask = self.params.mask

    def _table(self, like):
        """(x, offset, gain, bias, scale, mask, clip, where) in the array library and float type of `like`."""
        p = self.params
        if isinstance(like, torch.Tensor):
            dtype = like.dtype if like.is_floating_point() else torch.float64
            to = lambda a: torch.as_tensor(a, dtype=dtype, device=like.device)  # noqa: E731
            return (
                like.to(dtype),
                to(p.offset),
                to(p.gain),
                to(p.bias),
                to(p.scale),
                torch.as_tensor(p.mask, device=like.device),
                torch.clamp,
                torch.where,
            )
        like = np.asarray(like)
        dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
        to = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
        return (
            like.astype(dtype, copy=False),
            to(p.offset),
            to(p.gain),
            to(p.bias),
            to(p.scale),
            p.mask,
            np.clip,
            np.where,
        )

    def _check(self, x) -> None:
        if x.shape[-1] != len(self.mask):
            raise ValueError(f"expected last dimension {len(self.mask)}, got shape {tuple(x.shape)}")

    def normalize(self, x):
        self._check(x)
        x, offset, gain, bias, _, mask, clip, where = self._table(x)
        y = (x - offset) * gain + bias
        if self.params.clip:
            y = clip(y, -1.0, 1.0)
        return where(mask, y, x)

    def unnormalize(self, y):
        self._check(y)
        y, offset, _, bias, scale, mask, clip, where = self._table(y)
        x = ((clip(y, -1.0, 1.0) if self.params.clip else y) - bias) * scale + offset
        return where(mask, x, y)


def default_action_mask(action_dim: int, gripper_dims: int = 1) -> list[bool]:
    """Normalize every action dimension but the trailing gripper (0..1 stays as it is)."""
    return [True] * (action_dim - gripper_dims) + [False] * gripper_dims


def action_normalization_mask(
    action_dim: int, normalize_gripper: bool = False, gripper_dims: int = 1, dataset_mask: Sequence[bool] | None = None
) -> list[bool] | None:
    """The action-normalization mask a loader applies (and inference inverts): None (every dimension
    normalized) with `normalize_gripper`; else the dataset's own mask when it has one of this size (RLDS
    dataset configs), else every dimension but the trailing `gripper_dims`."""
    if normalize_gripper:
        return None
    if dataset_mask is not None and len(dataset_mask) == action_dim:
        return [bool(m) for m in dataset_mask]
    return default_action_mask(action_dim, gripper_dims)
