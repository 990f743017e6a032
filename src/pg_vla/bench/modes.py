"""The timed modes on one built model: KV-cached and uncached action sampling, the train step.

    sample_cached    model.sample_actions(..., use_cache=True): prefix encoded once, action tokens per step
    sample_uncached  model.sample_actions(..., use_cache=False): images embedded once, every flow step runs
                     all tokens through the joint transformer
    train_step       forward (flow-matching loss) + backward + gradient clipping + optimizer.step + zero_grad,
                     with model.frozen_parameter_names() frozen
    train_forward_backward   the same without clipping and the optimizer step (gradients dropped)

Each entry holds the latency statistics in ms (harness.latency_stats), the timing fields of the warm-up
and peak memory (memory.memory_probe). Sampled actions are (B, H, action_dim) in normalized units.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from pg_vla.bench.harness import error_entry, latency_stats, maybe_profile, time_calls
from pg_vla.bench.memory import memory_probe
from pg_vla.bench.workload import bench_optimizer, make_train_step, sample, trainable_parameters
from pg_vla.model.vla.pizero import PiZero

TIMED_MODES = ("sample_cached", "sample_uncached", "train_step", "train_forward_backward")
TRAIN_MODES = ("train_step", "train_forward_backward")
MODES = (*TIMED_MODES, "precision_gap")


def bench_sampling(
    model: PiZero,
    inputs: dict[str, torch.Tensor],
    use_cache: bool,
    num_steps: int,
    args: argparse.Namespace,
    device: torch.device,
    label: str = "sample",
) -> tuple[dict[str, Any], torch.Tensor | None]:
    model.eval()

    def call() -> torch.Tensor:
        return sample(model, inputs, num_steps, use_cache)

    entry: dict[str, Any] = {}
    with memory_probe(device, entry):
        fields, out, seconds = time_calls(call, device, args.warmup, args.runs, args.max_seconds_per_mode)
    entry = {**latency_stats(seconds, args.batch_size), **fields, **entry}
    maybe_profile(call, device, args, label, entry)
    return entry, out


def bench_train(
    model: PiZero,
    inputs: dict[str, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
    label: str = "train_step",
    optimizer_step: bool = True,
) -> dict[str, Any]:
    params = trainable_parameters(model)
    model.train()
    model.set_gradient_checkpointing(args.gradient_checkpointing)
    entry: dict[str, Any] = {}
    optimizer = None
    try:
        with memory_probe(device, entry):
            optimizer = bench_optimizer(args.optimizer, model) if optimizer_step else None
            step = make_train_step(model, inputs, optimizer)
            fields, loss, seconds = time_calls(step, device, args.warmup, args.runs, args.max_seconds_per_mode)
        entry = {**latency_stats(seconds, args.train_batch_size), **fields, **entry}
        entry["last_loss"] = float(loss) if math.isfinite(float(loss)) else str(float(loss))
        maybe_profile(step, device, args, label, entry)
    finally:
        # Free gradients and optimizer state before the next combination.
        for p in params:
            p.grad = None
        del optimizer
        model.set_gradient_checkpointing(False)
        model.eval()
    entry.update(
        batch_size=args.train_batch_size,
        optimizer=args.optimizer if optimizer_step else None,
        gradient_checkpointing=args.gradient_checkpointing,
        trainable_parameters=sum(p.numel() for p in params),
    )
    return entry


def consistency(
    model: PiZero,
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    num_steps: int,
    device: torch.device,
) -> dict[str, Any]:
    """Max abs difference between cached and uncached sampling from the same noise."""
    try:
        if "sample_cached" in outputs and "sample_uncached" in outputs:
            a, b, steps = outputs["sample_cached"], outputs["sample_uncached"], num_steps
        else:  # only one sampling mode was timed: compare both with a single (cheap) flow step
            steps = 1
            model.eval()
            a, b = (sample(model, inputs, 1, use_cache).float().cpu() for use_cache in (True, False))
        return {"max_abs_diff": float((a - b).abs().max()), "num_steps": steps}
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        return error_entry(error)
