"""Temporal ensembling of overlapping action chunks (ACT's scheme), for closed-loop chunk execution.

The policy predicts a chunk of H actions at every step; step t then has up to H predictions, one from
each chunk predicted at t-H+1 .. t. The executed action is their weighted mean, with weight
exp(-k * i) for the i-th oldest prediction (i = 0 the oldest): k > 0 favours older predictions (ACT's
default, k = 0.01, gives nearly uniform weights), k < 0 newer ones, k = 0 the plain mean.

    ensemble = TemporalEnsemble(horizon=4, k=0.01)
    ensemble.reset()                      # at an episode start
    action = ensemble.step(chunk)         # chunk (H, A) predicted at this step -> the action (A,) to execute
"""

from __future__ import annotations

from collections import deque

import numpy as np


class TemporalEnsemble:
    def __init__(self, horizon: int, k: float = 0.01):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not np.isfinite(k):
            raise ValueError(f"the ensembling coefficient k must be finite, got {k}")
        self.horizon, self.k = int(horizon), float(k)
        # the last `horizon` chunks, one per step, newest last
        self.chunks: deque[np.ndarray] = deque(maxlen=self.horizon)

    def reset(self) -> None:
        self.chunks.clear()

    def step(self, chunk: np.ndarray) -> np.ndarray:
        """chunk (H, A) predicted at the current step -> the ensembled action (A,) for this step (float64)."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[0] != self.horizon:
            raise ValueError(f"expected a chunk ({self.horizon}, A), got shape {chunk.shape}")
        if self.chunks and self.chunks[-1].shape != chunk.shape:
            raise ValueError(f"chunk shape changed within an episode: {self.chunks[-1].shape} -> {chunk.shape}")
        self.chunks.append(chunk)
        n = len(self.chunks)
        # the oldest stored chunk was predicted n-1 steps ago: its row n-1 is for this step
        predictions = np.stack([c[n - 1 - i] for i, c in enumerate(self.chunks)])  # (n, A), oldest first
        weights = np.exp(-self.k * np.arange(n))  # (n,)
        return weights @ predictions / weights.sum()
