"""Gemma building blocks shared by both experts: RMSNorm, rotary position embedding, GeGLU MLP.

Shapes: B batch, T tokens, D hidden, H query heads, K key/value heads, Dh head dim.
Module and parameter names follow the PaliGemma checkpoint layout so weights load by prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pg_vla.model.linear import Linear


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: x / rms(x) * (1 + w), computed in float32 and cast back."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float32 x / rms(x), without the weight."""
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.normalize(x) * (1.0 + self.weight.float())).type_as(x)


class AdaptiveRMSNorm(RMSNorm):
    """RMSNorm whose scale and shift are also modulated by a conditioning vector (adaLN, adaLN-Zero).

    out = rms_norm(x) * (1 + w) * (1 + scale(c)) + shift(c); with `zero=True` it also returns a
    residual gate(c). The modulation is zero-initialised, so the layer starts as a plain RMSNorm
    (and, for adaLN-Zero, with closed residual gates). Without a condition it is a plain RMSNorm
    and the gate is 1: tokens that carry no time (proprio) pass through unmodulated.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6, zero: bool = False):
        super().__init__(dim, eps)
        self.zero = zero
        self.modulation = Linear(cond_dim, dim * (3 if zero else 2))
        self.modulation._zero_init = True  # model-wide weight init leaves it at zero
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def modulate(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D), cond (B, C) or None -> (normalized x (B, T, D), gate (B, 1, D) or None)."""
        out = self.normalize(x) * (1.0 + self.weight.float())
        if cond is None:
            return out.type_as(x), None
        mods = self.modulation(cond).float().unsqueeze(1)  # (B, 1, 2D or 3D)
        if self.zero:
            scale, shift, gate = mods.chunk(3, dim=-1)
        else:
            (scale, shift), gate = mods.chunk(2, dim=-1), None
        out = out * (1.0 + scale) + shift
        return out.type_as(x), None if gate is None else gate.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # unconditioned use
        return self.modulate(x, None)[0]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (half-split layout, as Gemma): cos/sin tables from integer positions.

    The frequencies are computed in float32 on every call (head_dim / 2 values) rather than kept as
    a buffer, so casting the model to bfloat16 or building it on the meta device cannot degrade them.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin (B, 1, T, Dh) in `dtype`, broadcastable over heads."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents)  # (Dh/2,)
        freqs = positions.float().unsqueeze(-1) * inv_freq  # (B, T, Dh/2)
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # (B, 1, T, Dh)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh) rotated by the position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class GatedMLP(nn.Module):
    """GeGLU feed-forward: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class TokenEmbedding(nn.Embedding):
    """Gemma token embedding, scaled by sqrt(hidden) (the scale rounded to the weight dtype, as Gemma)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.embedding_dim**0.5, dtype=self.weight.dtype, device=self.weight.device)
        return super().forward(ids) * scale
