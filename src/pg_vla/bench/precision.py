"""The precision gap: bf16 KV-cached sampling against fp32 uncached sampling (the reference).

Both sample from the same weights and noise; differences are in normalized action units (sample_actions'
output in [-1, 1]) over batch x horizon x action dim: mean L1 and max abs difference.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from contextlib import contextmanager
from typing import Any

import torch

from pg_vla.bench.harness import error_entry, free_memory, is_oom, log
from pg_vla.bench.memory import check_fits, parameter_counts
from pg_vla.bench.workload import make_inputs, sample
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero

PUBLISHED_MEAN_L1 = (5e-4, 2.5e-3)  # bf16 vs fp32 action differences reported for pi0-style models
TARGET_MEAN_L1 = 5e-4


@contextmanager
def full_float32_matmuls():
    """True float32 matmuls (no TF32) for the reference, whatever --tf32 says."""
    previous = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def _difference(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    diff = (candidate.double() - reference.double()).abs()
    return {"mean_l1": float(diff.mean()), "max_abs_diff": float(diff.max())}


def bench_precision_gap(
    cfg: PiZeroConfig, num_steps: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """bf16 KV-cached sampling against fp32 uncached sampling from the same weights and noise.

    The model is built in float32 with the benchmark's seed (the same weights every combination
    starts from), samples the reference without the cache, then is cast to bfloat16 and samples with
    the cache. Differences are in normalized action units (sample_actions' output in [-1, 1]).
    """
    total = parameter_counts(cfg)[0]["total"]
    reason = None if args.no_memory_check else check_fits(int(total * 4 * 1.1), device, "precision_gap (float32 model)")
    if reason:
        return {"skipped": reason}
    entry: dict[str, Any] = {
        "reference": "float32, uncached (use_cache=False)",
        "candidate": "bfloat16, KV-cached",
        "batch_size": args.batch_size,
        "num_steps": num_steps,
    }
    model = None
    try:
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = PiZero(cfg)
        model.eval()
        inputs = make_inputs(cfg, args.batch_size, torch.float32, device, torch.Generator().manual_seed(args.seed))

        def actions(use_cache: bool, images: torch.Tensor | None = None) -> torch.Tensor:
            return sample(model, inputs, num_steps, use_cache, images).float().cpu()

        with full_float32_matmuls():
            reference = actions(use_cache=False)
            fp32_cached = actions(use_cache=True)
        model.to(torch.bfloat16)
        images = inputs["images"].to(torch.bfloat16)
        bf16_cached = actions(use_cache=True, images=images)
        bf16_uncached = actions(use_cache=False, images=images)
        entry.update(_difference(bf16_cached, reference))
        entry.update(
            elements=reference.numel(),
            target_mean_l1=TARGET_MEAN_L1,
            meets_target=entry["mean_l1"] < TARGET_MEAN_L1,
            published_mean_l1_range=list(PUBLISHED_MEAN_L1),
            reference_mean_abs_action=float(reference.abs().mean()),
            float32_cached=_difference(fp32_cached, reference),
            bfloat16_uncached=_difference(bf16_uncached, reference),
            note="randomly initialized weights (seeded): trained checkpoints can differ",
        )
        log(
            f"  precision gap: mean L1 {entry['mean_l1']:.3g}, max {entry['max_abs_diff']:.3g} "
            f"(target < {TARGET_MEAN_L1:g})"
        )
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        if not is_oom(error):
            traceback.print_exc(file=sys.stderr)
        entry.update(error_entry(error))
    finally:
        model = None  # drop the weights before the next combination is measured
        free_memory(device)
    return entry
