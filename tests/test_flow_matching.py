"""Flow matching pieces against hand-computed values and float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pg_vla.model.vla.flow_matching import euler_sample, interpolate, sample_time, target_velocity
from pg_vla.model.vla.modules import sinusoidal_embedding
from pg_vla.model.vla.pizero import _choose_token


def test_path_endpoints_and_velocity():
    actions = torch.tensor([[[0.5, -0.25]]])
    noise = torch.tensor([[[1.0, 2.0]]])
    assert torch.equal(interpolate(actions, noise, torch.tensor([1.0])), noise)  # t = 1: pure noise
    assert torch.equal(interpolate(actions, noise, torch.tensor([0.0])), actions)  # t = 0: data
    torch.testing.assert_close(interpolate(actions, noise, torch.tensor([0.25])), torch.tensor([[[0.625, 0.3125]]]))
    assert torch.equal(target_velocity(actions, noise), torch.tensor([[[0.5, 2.25]]]))


def test_euler_recovers_actions_from_the_exact_velocity():
    """With v = noise - actions (the straight path's true velocity) every Euler step is exact."""
    actions = torch.tensor([[[0.3, -0.7, 0.9]]])
    noise = torch.tensor([[[1.5, 0.2, -2.0]]])
    seen_t = []

    def velocity(x, t):
        seen_t.append(t[0].item())
        return noise - actions

    out = euler_sample(velocity, noise, num_steps=10)
    torch.testing.assert_close(out, actions)
    assert seen_t == pytest.approx([1.0 - k / 10 for k in range(10)])


def test_euler_against_float64_integration_and_clipping():
    """dx/dt = x has x(0) = x(1) * (1 - 1/N)^N under N backward Euler steps from t = 1 to 0."""
    x1 = torch.tensor([[[0.5, -0.2]]])
    out = euler_sample(lambda x, t: x, x1, num_steps=4, clip=None)
    torch.testing.assert_close(out, x1 * (1 - 1 / 4) ** 4)
    clipped = euler_sample(lambda x, t: -10 * torch.ones_like(x), x1, num_steps=2)
    assert torch.equal(clipped, torch.ones_like(x1))


def test_time_sampling_distributions():
    torch.manual_seed(0)
    t = sample_time(200_000, "beta", alpha=1.5, beta=1.0, time_max=0.999)
    assert t.min() >= 0.001 and t.max() <= 1.0
    # E[0.999 * Beta(1.5, 1) + 0.001] = 0.999 * 0.6 + 0.001; P(Beta(1.5,1) < 0.5) = 0.5 ** 1.5
    assert t.mean().item() == pytest.approx(0.999 * 0.6 + 0.001, abs=3e-3)
    assert (t < 0.999 * 0.5 + 0.001).float().mean().item() == pytest.approx(0.5**1.5, abs=5e-3)
    u = sample_time(200_000, "uniform", time_max=0.999)
    assert u.mean().item() == pytest.approx(0.5, abs=3e-3)
    with pytest.raises(ValueError, match="unknown time sampling"):
        sample_time(2, "lognormal")


def test_sinusoidal_embedding_is_pi0s_float32_formula():
    """pi0 (openpi, transformers' PI0) computes the angles in float32 as t x (2 pi / period); the float64
    angles differ only by float32 rounding (angles up to 2 pi / 4e-3 = 1571 rad)."""
    t = torch.tensor([0.0, 0.37, 1.0])
    emb = sinusoidal_embedding(t, 8, 4e-3, 4.0)
    fraction = np.linspace(0.0, 1.0, 4, dtype=np.float32)
    period = np.float32(4e-3) * np.float32(4.0 / 4e-3) ** fraction
    angles32 = t.numpy()[:, None] * (np.float32(1.0) / period * np.float32(2 * math.pi))[None, :]
    expected32 = np.concatenate([np.sin(angles32), np.cos(angles32)], axis=1)
    np.testing.assert_allclose(emb.numpy(), expected32, atol=1e-5)  # sin of ~1571 rad: libm vs torch
    periods = 4e-3 * (4.0 / 4e-3) ** np.linspace(0.0, 1.0, 4)
    angles = t.numpy().astype(np.float64)[:, None] * 2 * math.pi / periods[None, :]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    np.testing.assert_allclose(emb.numpy(), expected, atol=3e-4)


def test_nucleus_sampling_keeps_the_top_p_mass():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(4000, -1)
    probs = torch.softmax(logits[0], dim=0)  # 0.644, 0.237, 0.087, 0.032: top_p 0.8 keeps tokens 0 and 1
    gen = torch.Generator().manual_seed(0)
    tokens = _choose_token(logits, temperature=1.0, top_p=0.8, generator=gen)
    assert set(tokens.tolist()) == {0, 1}
    share = (tokens == 0).float().mean().item()
    assert share == pytest.approx((probs[0] / (probs[0] + probs[1])).item(), abs=0.03)
    assert torch.equal(_choose_token(logits[:3], None, 1.0, None), torch.zeros(3, dtype=torch.long))
    tiny_p = _choose_token(logits[:50], temperature=1.0, top_p=1e-6, generator=gen)
    assert torch.equal(tiny_p, torch.zeros(50, dtype=torch.long))
    hot = _choose_token(logits, temperature=100.0, top_p=1.0, generator=gen)  # nearly uniform
    assert set(hot.tolist()) == {0, 1, 2, 3}
