"""Flow matching on action chunks, in openpi's convention: t = 1 is pure noise, t = 0 is the data.

    x_t = t * noise + (1 - t) * actions        (straight path)
    u   = dx_t / dt = noise - actions           (what the network predicts)

Training draws t from Beta(1.5, 1) squashed into [1 - time_max, 1] (more weight on noisy times,
pi0's choice) or uniformly. Sampling integrates dx/dt = v(x, t) from t = 1 to t = 0 with Euler steps
and clips to [-1, 1], the normalized action range. The integrator knows nothing about the model:
it calls `velocity_fn(x_t, t)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_time(
    batch_size: int,
    mode: str,
    *,
    alpha: float = 1.5,
    beta: float = 1.0,
    time_max: float = 0.999,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B,) flow times in (1 - time_max, 1]."""
    if mode == "beta":
        dist = torch.distributions.Beta(torch.tensor(alpha, device=device), torch.tensor(beta, device=device))
        t = dist.sample((batch_size,))
    elif mode == "uniform":
        t = torch.rand(batch_size, device=device)
    else:
        raise ValueError(f"unknown time sampling {mode!r} (beta or uniform)")
    return time_max * t + (1.0 - time_max)


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """actions, noise (B, H, A), t (B,) -> x_t (B, H, A)."""
    t = t.to(actions.dtype).view(-1, *([1] * (actions.ndim - 1)))
    return t * noise + (1.0 - t) * actions


def target_velocity(actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - actions


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    num_steps: int,
    clip: float | None = 1.0,
) -> torch.Tensor:
    """Integrate from x_1 = noise (B, H, A) to x_0 with `num_steps` Euler steps of size 1 / num_steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    x = noise
    dt = 1.0 / num_steps
    for step in range(num_steps):
        t = torch.full((noise.shape[0],), 1.0 - step * dt, dtype=torch.float32, device=noise.device)
        x = x - dt * velocity_fn(x, t)
    return x.clamp(-clip, clip) if clip is not None else x
