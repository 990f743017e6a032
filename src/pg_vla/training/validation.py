"""Validation metrics: the training loss (flow matching or, for the discrete head, cross-entropy) and
action-chunk accuracy at thresholds.

Threshold accuracy (in normalized action units, where actions lie in [-1, 1]): a predicted chunk counts
as correct at threshold th when every valid step and every dimension is within th of the ground truth,
|pred - true| <= th. Steps past an episode's end (action_mask False) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def chunk_within_threshold(
    pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor | None, thresholds: Sequence[float]
) -> torch.Tensor:
    """pred, true (B, H, A), mask (B, H) bool -> (len(thresholds), B) bool: chunk within each threshold."""
    error = (pred.float() - true.float()).abs().amax(dim=-1)  # (B, H): worst dimension per step
    if mask is not None:
        error = torch.where(mask.bool(), error, torch.zeros_like(error))
    worst = error.amax(dim=-1)  # (B,)
    return torch.stack([worst <= th for th in thresholds])


class ValidationTotals:
    """Sums over batches (and ranks): loss weighted by samples, correct chunks per threshold."""

    def __init__(self, thresholds: Sequence[float]):
        self.thresholds = tuple(thresholds)
        self.loss_sum = 0.0
        self.correct = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self.samples = 0

    def add(self, loss: float, within: torch.Tensor) -> None:
        """loss: mean loss of a batch; within: (len(thresholds), B) bool from `chunk_within_threshold`."""
        batch = within.shape[1]
        self.loss_sum += loss * batch
        self.correct += within.sum(dim=1).double().cpu()
        self.samples += batch

    def as_tensor(self) -> torch.Tensor:
        return torch.cat([torch.tensor([self.loss_sum, float(self.samples)], dtype=torch.float64), self.correct])

    @classmethod
    def from_tensor(cls, thresholds: Sequence[float], packed: torch.Tensor) -> "ValidationTotals":
        totals = cls(thresholds)
        totals.loss_sum, totals.samples = float(packed[0]), int(packed[1])
        totals.correct = packed[2:].double().cpu()
        return totals

    def metrics(self) -> dict[str, float]:
        n = max(self.samples, 1)
        out = {"val_loss": self.loss_sum / n, "val_samples": float(self.samples)}
        for th, correct in zip(self.thresholds, self.correct.tolist()):
            out[f"val_accuracy@{th:g}"] = correct / n
        return out
