"""Analytic FLOP counts (flops.py) against torch's FlopCounterMode run on the real model.

FlopCounterMode counts the matmul-like aten ops the model actually dispatches (mm, addmm, bmm,
convolution, scaled_dot_product_attention and their backward), so it is an independent reference:
the analytic count must reproduce it exactly, for the forward pass, a train step with the frozen
parameters frozen (also under gradient checkpointing), and cached / uncached sampling.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.flops import COMPONENTS, flops_breakdown, forward_flops, sampling_flops, train_step_flops
from pg_vla.model.vla.pizero import PiZero

GEOMETRIES = {
    "tiny": {},
    # one KV head (GQA 4:1), two cameras, longer proprio history and chunk
    "tiny_gqa_2cams": {"num_cameras": 2, "vlm": {"num_kv_heads": 1}, "cond_steps": 2, "horizon_steps": 5},
    # adaLN-Zero time conditioning (per-sample modulations, a separate proprio segment), frozen SigLIP
    "tiny_adaln_zero_frozen_vision": {"time_conditioning": "adaln_zero", "freeze_vision": True},
}


def _counted(fn) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops(), {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def _fused_attention_backward(ops: dict[str, int]) -> bool:
    """Fused SDPA backward kernels recompute Q K^T (FlopCounterMode counts 2.5x the forward, bmm 2x)."""
    return any("scaled_dot_product" in op and "backward" in op for op in ops)


def _setup(cfg: PiZeroConfig, batch: int = 2, device: str = "cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        model = PiZero(cfg)
        s = cfg.vision.image_size
        text_mask = torch.ones(batch, cfg.max_text_tokens, dtype=torch.bool)
        text_mask[-1, cfg.max_text_tokens // 2 :] = False  # padding is computed like real tokens
        inputs = {
            "images": torch.rand(batch, cfg.num_views, 3, s, s) * 2 - 1,
            "text_ids": torch.randint(0, cfg.vlm.vocab_size, (batch, cfg.max_text_tokens)),
            "text_mask": text_mask,
            "proprio": torch.rand(batch, cfg.cond_steps, cfg.proprio_dim),
        }
        actions = torch.rand(batch, cfg.horizon_steps, cfg.action_dim)
        noise = torch.randn(batch, cfg.horizon_steps, cfg.action_dim)
        time = torch.rand(batch)
    frozen = set(model.frozen_parameter_names())
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    loss = lambda: model(**inputs, actions=actions, noise=noise, time=time)  # noqa: E731
    return model, inputs, noise, loss


def _tiny(name: str) -> PiZeroConfig:
    return PiZeroConfig.preset("tiny", **GEOMETRIES[name])


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_forward_and_sampling_match_flop_counter(name: str):
    cfg = _tiny(name)
    model, inputs, noise, loss = _setup(cfg)
    with torch.no_grad():
        reference, _ = _counted(loss)
    assert forward_flops(cfg, batch=2) == reference
    for use_cache in (True, False):
        reference, _ = _counted(
            lambda use_cache=use_cache: model.sample_actions(**inputs, noise=noise, num_steps=2, use_cache=use_cache)
        )
        assert sampling_flops(cfg, num_steps=2, use_cache=use_cache, batch=2) == reference, use_cache


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_train_step_matches_flop_counter(name: str, checkpointing: bool):
    cfg = _tiny(name)
    model, _, _, loss = _setup(cfg)
    model.train()
    model.set_gradient_checkpointing(checkpointing)
    reference, ops = _counted(lambda: loss().backward())
    fused = _fused_attention_backward(ops)
    counted = train_step_flops(
        cfg, batch=2, gradient_checkpointing=checkpointing, fused_attention_backward=fused, include_recompute=True
    )
    assert counted == reference
    if not checkpointing:
        assert train_step_flops(cfg, batch=2) <= counted  # model FLOPs count attention backward 2x


def test_full_size_geometry_on_meta_device():
    """pi0's real dimensions with 3 cameras and a 50-step chunk, counted on the meta device (no memory)."""
    cfg = PiZeroConfig.preset("pi0", num_cameras=3, horizon_steps=50)
    model, inputs, noise, loss = _setup(cfg, batch=1, device="meta")
    reference, ops = _counted(lambda: loss().backward())
    assert train_step_flops(cfg, fused_attention_backward=_fused_attention_backward(ops)) == reference
    reference, _ = _counted(lambda: model.sample_actions(**inputs, noise=noise, num_steps=2, use_cache=True))
    assert sampling_flops(cfg, num_steps=2, use_cache=True) == reference


def test_breakdown_structure_and_scaling():
    cfg = PiZeroConfig.preset("pi0")
    for kind in ("forward", "train_step", "sample_cached", "sample_uncached"):
        one, eight = flops_breakdown(cfg, kind, batch=1), flops_breakdown(cfg, kind, batch=8)
        assert set(one["by_component"]) == set(COMPONENTS)
        assert sum(one["by_component"].values()) == one["total"] > 0
        assert eight["total"] == 8 * one["total"]  # every matmul's rows scale with the batch
    train = flops_breakdown(cfg, "train_step")
    # every computed weight of the default config trains; pixels / proprio / noisy actions need no gradient
    assert 2 * train["forward"] - 1e-3 * train["forward"] < train["backward"] <= 2 * train["forward"]
    assert train["model_flops"] == train["total"] == train_step_flops(cfg)
    cached = flops_breakdown(cfg, "sample_cached", num_steps=10)
    assert cached["total"] == cached["prefix"] + 10 * cached["per_step"]
    # the VLM dominates: ~2 * 1.98B Gemma layer parameters * 276 prefix tokens (minus the last layer's unread part)
    assert 0.9e12 < cached["by_component"]["vlm"] < 1.1e12
    # uncached: the images are embedded once, then every step runs the whole forward above the vision tower
    forward = flops_breakdown(cfg, "forward")["by_component"]
    embedding = forward["vision"] + forward["vision_attention"] + forward["projector"]
    uncached = flops_breakdown(cfg, "sample_uncached", num_steps=10)
    assert uncached["total"] == embedding + 10 * (sum(forward.values()) - embedding)
    assert (uncached["prefix"], uncached["per_step"]) == (embedding, sum(forward.values()) - embedding)
    assert uncached["total"] > 7 * cached["total"]
    frozen_tower = flops_breakdown(PiZeroConfig.preset("pi0", freeze_vision=True), "train_step")
    forward = flops_breakdown(cfg, "forward")
    assert frozen_tower["by_component"]["vision"] == forward["by_component"]["vision"]  # no backward at all
    assert frozen_tower["by_component"]["projector"] == 2 * forward["by_component"]["projector"]  # weight grad only
    with pytest.raises(ValueError):
        forward_flops(PiZeroConfig.preset("tiny", action_head="discrete"))
