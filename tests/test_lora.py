"""LoRA / QLoRA on a tiny pi0: what trains, what stays, and merged weights that reproduce the adapted model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.lora import LoraSettings, apply_lora, merged_state_dict, trainable_state_dict
from pg_vla.training.optim import ACTION_EXPERT_PREFIXES, OptimizerConfig, make_optimizer


def _batch(model: PiZero, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    b, s = 2, cfg.vision.image_size
    return {
        "images": torch.rand(b, cfg.num_views, 3, s, s, generator=g) * 2 - 1,
        "text_ids": torch.randint(0, cfg.image_token_id, (b, cfg.max_text_tokens), generator=g),
        "text_mask": torch.ones(b, cfg.max_text_tokens, dtype=torch.bool),
        "proprio": torch.randn(b, cfg.cond_steps, cfg.proprio_dim, generator=g),
        "actions": torch.randn(b, cfg.horizon_steps, cfg.action_dim, generator=g).clamp(-1, 1),
    }


def _velocity(model: PiZero, batch: dict, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch["actions"].shape, generator=g)
    t = torch.rand(x_t.shape[0], generator=g)
    with torch.no_grad():
        return model.predict_velocity(batch["images"], batch["text_ids"], batch["text_mask"], batch["proprio"], x_t, t)


def _train(model: PiZero, batch: dict, steps: int, name: str = "adamw") -> list[float]:
    optimizer = make_optimizer(model, OptimizerConfig(name=name, vlm_lr=1e-2, action_expert_lr=1e-2))
    losses = []
    for step in range(steps):
        torch.manual_seed(step)
        loss = model(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("quantize", [False, True], ids=["lora", "qlora"])
def test_only_adapters_and_action_expert_change(tiny_checkpoint_dir: Path, quantize: bool) -> None:
    torch.manual_seed(0)
    model = PiZero.from_paligemma(tiny_checkpoint_dir)
    adapted = apply_lora(model, LoraSettings(r=4, alpha=8, quantize=quantize))
    assert any(n.startswith("vision_tower.") for n in adapted) and any(".vlm." in n for n in adapted)
    if quantize:
        from pg_vla.utils.imports import import_bitsandbytes

        bnb = import_bitsandbytes()
        modules = dict(model.named_modules())
        assert all(isinstance(modules[f"{n}.base_layer"], bnb.nn.Linear4bit) for n in adapted)
        assert modules[f"{adapted[0]}.base_layer"].weight.dtype == torch.uint8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch(model)
    _train(model, batch, steps=3)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = {k for k in changed if ".lora_A." in k or ".lora_B." in k}
    action = {k for k in changed if k.startswith(ACTION_EXPERT_PREFIXES)}
    assert changed == adapters | action
    assert adapters and action
    assert any(".vlm." in k for k in adapters) and any(k.startswith("vision_tower.") for k in adapters)
    # every trainable tensor is an adapter or on the action-expert side
    assert all(".lora_" in k or k.startswith(ACTION_EXPERT_PREFIXES) for k in trainable_state_dict(model))


@pytest.mark.parametrize("quantize", [False, True], ids=["lora", "qlora"])
def test_merged_weights_reproduce_the_adapted_model(tiny_checkpoint_dir: Path, quantize: bool) -> None:
    torch.manual_seed(0)
    model = PiZero.from_paligemma(tiny_checkpoint_dir)
    apply_lora(model, LoraSettings(r=4, alpha=8, quantize=quantize))
    batch = _batch(model)
    _train(model, batch, steps=2)  # lora_B starts at zero: make the adapters non-trivial
    plain = PiZero(model.config)
    merged = merged_state_dict(model)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged)
    reference = _velocity(model, batch)
    np_diff = (_velocity(plain, batch) - reference).abs().max().item()
    assert np_diff < 1e-4, np_diff
    # and the adapters matter: the un-merged base alone gives something else
    base = PiZero.from_paligemma(tiny_checkpoint_dir)
    base.load_state_dict({k: v for k, v in merged.items() if k.startswith(ACTION_EXPERT_PREFIXES)}, strict=False)
    assert (_velocity(base, batch) - reference).abs().max().item() > 1e-3


def test_qlora_with_8bit_adamw_lowers_the_loss(tiny_checkpoint_dir: Path) -> None:
    torch.manual_seed(0)
    model = PiZero.from_paligemma(tiny_checkpoint_dir)
    apply_lora(model, LoraSettings(r=4, alpha=8, quantize=True))
    batch = _batch(model)
    losses = _train(model, batch, steps=40, name="adamw8bit")
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_settings_validation() -> None:
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            LoraSettings(**bad)
