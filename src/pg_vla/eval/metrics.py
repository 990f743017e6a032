"""Offline action metrics over a validation set, for either action head.

Accumulated batch by batch (`ActionMetrics.add`), over the valid chunk steps only (`action_mask`):

    mse / mae            per action dimension and overall (the mean over dimensions), in normalized
                         units (the model's [-1, 1] space) and in original units (de-normalized with
                         the checkpoint's statistics)
    accuracy@th          fraction of samples whose whole chunk is within th of the truth in every valid
                         step and dimension (normalized units; `chunk_within_threshold`, as validation)
    bin_accuracy         discrete head: predicted bin == true bin, per dimension and overall

Every valid (sample, chunk step) contributes one value per dimension, so the overall MSE is the mean
of the per-dimension ones. Shapes: B batch, H horizon, A action dim (the dataset's), K bins.

`position_errors` summarises estimated object or goal positions (the Meta-World vision probe and the
scene-state readout).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pg_vla.training.validation import chunk_within_threshold

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


def position_errors(predicted: np.ndarray, truth: np.ndarray, radius: float) -> dict[str, float]:
    """(N, 3) estimated and true positions -> the median distance and the share within `radius` (same units)."""
    distance = np.linalg.norm(np.asarray(predicted) - np.asarray(truth), axis=-1)  # (N,)
    return {"median_error_m": float(np.median(distance)), "within_radius": float(np.mean(distance <= radius))}


class ActionMetrics:
    """Running sums of the metrics of the module docstring."""

    def __init__(self, action_dim: int, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, binned: bool = False):
        self.action_dim, self.thresholds, self.binned = action_dim, tuple(float(t) for t in thresholds), binned
        self.squared = {units: np.zeros(action_dim) for units in ("normalized", "original")}  # (A,) sums
        self.absolute = {units: np.zeros(action_dim) for units in ("normalized", "original")}
        self.bin_correct = np.zeros(action_dim)
        self.valid_steps = 0
        self.samples = 0
        self.within = np.zeros(len(self.thresholds), dtype=np.int64)

    def add(
        self,
        pred: np.ndarray,
        true: np.ndarray,
        pred_original: np.ndarray,
        true_original: np.ndarray,
        mask: np.ndarray,
        pred_bins: np.ndarray | None = None,
        true_bins: np.ndarray | None = None,
    ) -> None:
        """pred/true (B, H, A) normalized, *_original (B, H, A) in robot units, mask (B, H) bool,
        bins (B, H, A) int (discrete head)."""
        a = self.action_dim
        if pred.shape != true.shape or pred.shape[-1] != a or mask.shape != pred.shape[:2]:
            raise ValueError(
                f"expected pred/true (B, H, {a}) and mask (B, H), got {pred.shape}, {true.shape}, {mask.shape}"
            )
        valid = mask.astype(bool)  # (B, H)
        for units, (p, t) in (("normalized", (pred, true)), ("original", (pred_original, true_original))):
            error = p.astype(np.float64)[valid] - t.astype(np.float64)[valid]  # (V, A)
            self.squared[units] += (error**2).sum(axis=0)
            self.absolute[units] += np.abs(error).sum(axis=0)
        if self.binned:
            if pred_bins is None or true_bins is None:
                raise ValueError("bin accuracy needs pred_bins and true_bins")
            self.bin_correct += (pred_bins[valid] == true_bins[valid]).sum(axis=0)
        within = chunk_within_threshold(
            torch.from_numpy(pred), torch.from_numpy(true), torch.from_numpy(valid), self.thresholds
        )  # (len(thresholds), B)
        self.within += within.sum(dim=1).numpy()
        self.valid_steps += int(valid.sum())
        self.samples += pred.shape[0]

    def compute(self) -> dict[str, float | int | list[float]]:
        steps, samples = max(self.valid_steps, 1), max(self.samples, 1)
        out: dict[str, float | int | list[float]] = {"num_samples": self.samples, "num_valid_steps": self.valid_steps}
        for units, suffix in (("normalized", "_normalized"), ("original", "")):
            mse, mae = self.squared[units] / steps, self.absolute[units] / steps  # (A,)
            out[f"mse{suffix}"], out[f"mse{suffix}_per_dim"] = float(mse.mean()), mse.tolist()
            out[f"mae{suffix}"], out[f"mae{suffix}_per_dim"] = float(mae.mean()), mae.tolist()
        for th, count in zip(self.thresholds, self.within.tolist()):
            out[f"accuracy@{th:g}"] = count / samples
        if self.binned:
            accuracy = self.bin_correct / steps
            out["bin_accuracy"], out["bin_accuracy_per_dim"] = float(accuracy.mean()), accuracy.tolist()
        return out
