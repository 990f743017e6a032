"""Small encoders of the action expert: flow time, noisy actions, proprio.

Shapes: B batch, H action horizon, A action dim, D action-expert hidden.
The joint attention lives in joint_model.py (run that file for the block-mask demo).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pg_vla.model.linear import Linear


def sinusoidal_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """t (B,) -> (B, dim): [sin, cos] of t at periods spaced geometrically from min to max period.

    Computed in float32 in pi0's order (frequencies 2 pi / period, then t x frequency), as openpi and
    transformers' PI0 do: pi0's weights were trained on exactly these values (a float64 angle differs by
    up to ~1e-4 rad at the shortest period).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dim, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    frequency = 1.0 / period * 2 * math.pi  # (dim/2,)
    angles = t.float().unsqueeze(-1) * frequency  # (B, dim/2)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ActionTimeEncoder(nn.Module):
    """pi0's action-time MLP: token = W3 swish(W2 [W1 a, sinusoid(t)]); no separate conditioning."""

    def __init__(self, action_dim: int, width: int, min_period: float, max_period: float):
        super().__init__()
        self.width, self.min_period, self.max_period = width, min_period, max_period
        self.action_proj = Linear(action_dim, width)  # W1
        self.time_mlp_in = Linear(2 * width, width)  # W2
        self.time_mlp_out = Linear(width, width)  # W3

    def forward(self, actions: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        """actions (B, H, A), t (B,) -> tokens (B, H, D), no conditioning vector."""
        x = self.action_proj(actions)
        time = sinusoidal_embedding(t, self.width, self.min_period, self.max_period).to(x.dtype)
        time = time.unsqueeze(1).expand(-1, x.shape[1], -1)  # (B, H, D)
        x = self.time_mlp_in(torch.cat((x, time), dim=-1))
        return self.time_mlp_out(F.silu(x)), None


class AdaLNActionEncoder(nn.Module):
    """Actions embedded alone; time becomes a conditioning vector for the adaptive norms (adaLN)."""

    def __init__(self, action_dim: int, width: int, min_period: float, max_period: float):
        super().__init__()
        self.width, self.min_period, self.max_period = width, min_period, max_period
        self.action_proj = Linear(action_dim, width)
        self.time_mlp_in = Linear(width, width)
        self.time_mlp_out = Linear(width, width)

    def forward(self, actions: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """actions (B, H, A), t (B,) -> tokens (B, H, D), conditioning (B, D)."""
        x = self.action_proj(actions)
        time = sinusoidal_embedding(t, self.width, self.min_period, self.max_period).to(x.dtype)
        cond = self.time_mlp_out(F.silu(self.time_mlp_in(time)))
        return x, cond
