"""What the benchmark runs: the model's config, random inputs, the trainer's optimizer and one train step.

Inputs (batch B, cameras N, image size S, text tokens L, horizon H):
    images (B, N, 3, S, S) in [-1, 1] at the model dtype, text_ids (B, L), text_mask (B, L) right padded,
    proprio (B, cond_steps, proprio_dim) and actions (B, H, action_dim) in [-1, 1], noise (B, H, action_dim).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.optim import OptimizerConfig, clip_gradients, freeze_parameters, make_optimizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_config(name: str, args: argparse.Namespace) -> PiZeroConfig:
    overrides: dict[str, Any] = {}
    for key in ("num_cameras", "horizon_steps", "max_text_tokens"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return PiZeroConfig.preset(name, **overrides)


def make_inputs(
    cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random observation and action chunk; text of random length (right padded)."""
    s, lt = cfg.vision.image_size, cfg.max_text_tokens

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    lengths = torch.randint(max(1, lt // 2), lt + 1, (batch, 1), generator=generator)
    inputs = {
        "images": rand(batch, cfg.num_views, 3, s, s).to(dtype),
        "text_ids": torch.randint(0, cfg.vlm.vocab_size, (batch, lt), generator=generator),
        "text_mask": torch.arange(lt).expand(batch, -1) < lengths,
        "proprio": rand(batch, cfg.cond_steps, cfg.proprio_dim),
        "actions": rand(batch, cfg.horizon_steps, cfg.action_dim),
        "noise": torch.randn(batch, cfg.horizon_steps, cfg.action_dim, generator=generator),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def sample(
    model: PiZero,
    inputs: dict[str, torch.Tensor],
    num_steps: int,
    use_cache: bool,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """model.sample_actions in inference mode on `inputs` (its images unless `images` is given) from its fixed
    noise -> (B, H, action_dim) actions in normalized units, in the model's dtype on its device."""
    with torch.inference_mode():
        return model.sample_actions(
            inputs["images"] if images is None else images,
            inputs["text_ids"],
            inputs["text_mask"],
            inputs["proprio"],
            noise=inputs["noise"],
            num_steps=num_steps,
            use_cache=use_cache,
        )


def compile_model(model: PiZero, mode: str) -> None:
    """torch.compile the callables that do the model's work; sample_actions and forward look them up on
    the instance, so the compiled versions are used by every mode."""
    for name in ("encode_prefix", "denoise_step", "predict_velocity", "velocity_from_prefix"):
        setattr(model, name, torch.compile(getattr(model, name), mode=mode))


def trainable_parameters(model: PiZero) -> list[torch.nn.Parameter]:
    """Freeze what the trainer freezes for full fine-tuning; -> the trainable parameters."""
    frozen = set(freeze_parameters(model, train_vlm=True))
    return [p for name, p in model.named_parameters() if name not in frozen]


def bench_optimizer(name: str, model: PiZero) -> torch.optim.Optimizer:
    """The trainer's optimizer (`pg_vla.training.optim.make_optimizer`: its groups, kernels, and fp32 masters
    for bf16 weights), at a small learning rate."""
    return make_optimizer(model, OptimizerConfig(name=name, vlm_lr=1e-5, action_expert_lr=1e-5))


def make_train_step(
    model: PiZero, inputs: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None
) -> Callable[[], torch.Tensor]:
    """One step as the trainer runs it: flow-matching loss, backward, gradient clipping to norm 1 (the
    trainer's default), optimizer.step, zero_grad; -> the detached loss. `optimizer=None`: forward and
    backward only (the gradients are dropped)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        loss = model(inputs["images"], inputs["text_ids"], inputs["text_mask"], inputs["proprio"], inputs["actions"])
        loss.backward()
        if optimizer is None:
            for p in params:
                p.grad = None
        else:
            clip_gradients(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step
