"""Validation metrics: the training loss (flow matching or, for the discrete head, cross-entropy) and
action-chunk accuracy at thresholds.

Threshold accuracy (in normalized action units, where actions lie in [-1, 1]): a predicted chunk counts
as correct at threshold th when every valid step and every dimension is within th of the ground truth,
|pred - true| <= th. Steps past an episode's end (action_mask False) are ignored.

Models with a scene-state readout also report `val_scene_state_mse`: the mean squared error of the readout
against the data's scene state, in its normalized units (every entry of every sample alike).
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
        self.scene_sum = 0.0  # squared errors of the scene-state readout, summed over samples and entries
        self.scene_count = 0  # entries summed

    def add_scene_state(self, predicted: torch.Tensor, true: torch.Tensor) -> None:
        """predicted, true (B, K): the scene-state readout and the data's normalized scene state."""
        self.scene_sum += float((predicted.double() - true.double()).pow(2).sum())
        self.scene_count += true.numel()

    def add(self, loss: float, within: torch.Tensor) -> None:
        """loss: mean loss of a batch; within: (len(thresholds), B) bool from `chunk_within_threshold`."""
        batch = within.shape[1]
        self.loss_sum += loss * batch
        self.correct += within.sum(dim=1).double().cpu()
        self.samples += batch

    def as_tensor(self) -> torch.Tensor:
        head = [self.loss_sum, float(self.samples), self.scene_sum, float(self.scene_count)]
        return torch.cat([torch.tensor(head, dtype=torch.float64), self.correct])

    @classmethod
    def from_tensor(cls, thresholds: Sequence[float], packed: torch.Tensor) -> "ValidationTotals":
        totals = cls(thresholds)
        totals.loss_sum, totals.samples = float(packed[0]), int(packed[1])
        totals.scene_sum, totals.scene_count = float(packed[2]), int(packed[3])
        totals.correct = packed[4:].double().cpu()
        return totals

    def metrics(self) -> dict[str, float]:
        n = max(self.samples, 1)
        out = {"val_loss": self.loss_sum / n, "val_samples": float(self.samples)}
        for th, correct in zip(self.thresholds, self.correct.tolist()):
            out[f"val_accuracy@{th:g}"] = correct / n
        if self.scene_count:
            out["val_scene_state_mse"] = self.scene_sum / self.scene_count
        return out
