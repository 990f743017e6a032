"""One benchmark combination (config, dtype, compile), the target suite and its summary.

A combination builds a randomly initialized model once (fixed seed) and runs each requested mode on it;
a combination or mode estimated not to fit in memory is {"skipped": reason}, failures are
{"error": ...}. With --mfu, FLOP rates are against the dense matmul peak measured at the dtype.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import Any

import torch

from pg_vla.bench.attention import sdpa_backends
from pg_vla.bench.harness import error_entry, free_memory, is_oom, log, synchronize
from pg_vla.bench.max_batch import find_max_batch
from pg_vla.bench.memory import (
    GIB,
    MIB,
    activation_bytes,
    bytes_per_element,
    check_fits,
    parameter_counts,
    train_extra_bytes,
)
from pg_vla.bench.modes import TRAIN_MODES, bench_sampling, bench_train, consistency
from pg_vla.bench.precision import bench_precision_gap
from pg_vla.bench.roofline import add_rates, add_roofline, measure_peak_tflops
from pg_vla.bench.workload import DTYPES, build_config, compile_model, make_inputs
from pg_vla.model.vla.flops import sampling_flops, train_step_flops
from pg_vla.model.vla.pizero import PiZero


# ---- one combination --------------------------------------------------------------------------------------------
def bench_combination(
    config_name: str, dtype_name: str, use_compile: bool, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    dtype = DTYPES[dtype_name]
    cfg = build_config(config_name, args)
    num_steps = args.num_steps or cfg.num_inference_steps
    result: dict[str, Any] = {}
    if getattr(args, "target", None):
        result["target"] = args.target
    result.update(
        {
            "config": config_name,
            "dtype": dtype_name,
            "compile": use_compile,
            "device": device.type,
            "batch_size": args.batch_size,
            "num_cameras": cfg.num_cameras,
            "image_size": cfg.vision.image_size,
            "max_text_tokens": cfg.max_text_tokens,
            "horizon_steps": cfg.horizon_steps,
            "num_steps": num_steps,
            "seq_len": cfg.seq_len,
            "prefix_len": cfg.prefix_len,
        }
    )
    label = "_".join(
        x for x in (getattr(args, "target", None), config_name, dtype_name, "compiled" if use_compile else None) if x
    )
    counts, trainable = parameter_counts(cfg)
    result["parameters"] = counts
    total = counts["total"]
    if args.mfu:
        peak_dtype = dtype
        try:
            size = args.peak_matmul_size or (8192 if device.type == "cuda" else 1024)
            result["peak_matmul"] = measure_peak_tflops(device, peak_dtype, size)
            log(
                f"{config_name}/{dtype_name}: dense {size}x{size} matmul peak "
                f"{result['peak_matmul']['tflops']:.3f} TFLOP/s"
            )
        except Exception as error:  # noqa: BLE001 - reported in the JSON
            result["peak_matmul"] = error_entry(error)
        free_memory(device)
    peak = result.get("peak_matmul") if args.mfu and "tflops" in result.get("peak_matmul", {}) else None
    result["sdpa_backends"] = (
        sdpa_backends(cfg, args.batch_size, dtype, device)
        if not use_compile
        else {"skipped": "reported for the eager combination"}
    )

    free_memory(device)
    weights = total * bytes_per_element(dtype)
    train_need = train_extra_bytes(trainable, dtype, args.optimizer) + activation_bytes(
        cfg, args.train_batch_size, dtype, args.gradient_checkpointing
    )
    train_what = (
        f"train step (gradients + {args.optimizer} states for {trainable / 1e6:.0f}M trainable "
        f"{dtype_name} parameters + activations at batch {args.train_batch_size})"
    )
    modes: dict[str, Any] = {}
    for train_mode in (m for m in TRAIN_MODES if m in args.modes and not args.no_memory_check):
        # Checked before building too, so that a combination whose only mode cannot fit is not built.
        reason = check_fits(weights + train_need, device, f"{train_what} with the {weights / GIB:.1f} GiB model")
        if reason:
            modes[train_mode] = {"skipped": reason}
            log(f"{config_name}/{dtype_name}/compile={use_compile}: {train_mode} skipped ({reason})")
    if "precision_gap" in args.modes:  # builds its own float32 model: measured before this combination's
        log(f"{config_name}/{dtype_name}/compile={use_compile}: precision_gap ({num_steps} flow steps)")
        modes["precision_gap"] = bench_precision_gap(cfg, num_steps, args, device)
    find_batch = args.find_max_batch and not use_compile
    if not find_batch and all(m in modes for m in args.modes):  # nothing left that needs this model
        result["modes"] = {m: modes[m] for m in args.modes}
        return result
    # The model is built in float32 and then cast, so building needs 4 bytes per parameter.
    reason = (
        None
        if args.no_memory_check
        else check_fits(int(total * 4 * 1.05), device, "model build (float32, cast afterwards)")
    )
    if reason:
        log(f"{config_name}/{dtype_name}/compile={use_compile}: skipped ({reason})")
        result["skipped"] = reason
        if modes:
            result["modes"] = {m: modes[m] for m in args.modes if m in modes}
        return result

    log(f"{config_name}/{dtype_name}/compile={use_compile}: building model ({total / 1e6:.1f}M parameters)")
    model = None
    try:
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = PiZero(cfg)
        model = model.to(dtype).eval()
        synchronize(device)
        result["build_s"] = round(time.perf_counter() - start, 2)
        if device.type == "cuda":
            result["model_memory_mib"] = round(torch.cuda.memory_allocated(device) / MIB, 1)
        else:
            result["model_memory_mib"] = round(
                sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / MIB, 1
            )
        if use_compile:
            compile_model(model, args.compile_mode)
        generator = torch.Generator().manual_seed(args.seed)
        inputs = make_inputs(cfg, args.batch_size, dtype, device, generator)
        train_inputs = (
            inputs
            if args.train_batch_size == args.batch_size
            else make_inputs(cfg, args.train_batch_size, dtype, device, generator)
        )
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        if not is_oom(error):
            traceback.print_exc(file=sys.stderr)
        result.update(error_entry(error))
        del model
        free_memory(device)
        if modes:
            result["modes"] = {m: modes[m] for m in args.modes if m in modes}
        return result

    outputs: dict[str, torch.Tensor] = {}
    for mode in args.modes:
        if mode in modes:  # skipped before the build, or precision_gap
            continue
        log(f"{config_name}/{dtype_name}/compile={use_compile}: {mode} (warmup {args.warmup}, runs {args.runs})")
        free_memory(device)
        try:
            if mode in TRAIN_MODES:
                reason = None if args.no_memory_check else check_fits(train_need, device, train_what)
                if reason:
                    modes[mode] = {"skipped": reason}
                    log(f"  skipped ({reason})")
                    continue
                modes[mode] = bench_train(
                    model, train_inputs, args, device, f"{label}_{mode}", optimizer_step=mode == "train_step"
                )
                if args.mfu:
                    flops = train_step_flops(cfg)
                    modes[mode]["flops_per_sample"] = flops
                    add_rates(modes[mode], flops * args.train_batch_size, peak)
                    add_roofline(modes[mode], flops * args.train_batch_size, peak)
                    if args.gradient_checkpointing:  # the replayed forward: hardware FLOPs and HFU
                        hardware = train_step_flops(cfg, gradient_checkpointing=True, include_recompute=True)
                        modes[mode]["hardware_flops_per_sample"] = hardware
                        if "mfu" in modes[mode]:
                            modes[mode]["hfu"] = round(modes[mode]["mfu"] * hardware / flops, 6)
            else:
                use_cache = mode == "sample_cached"
                modes[mode], out = bench_sampling(model, inputs, use_cache, num_steps, args, device, f"{label}_{mode}")
                outputs[mode] = out.float().cpu()
                if args.mfu:
                    flops = sampling_flops(cfg, num_steps, use_cache=use_cache, batch=args.batch_size)
                    modes[mode]["flops"] = flops
                    add_rates(modes[mode], flops, peak)
                    if use_cache:
                        add_roofline(modes[mode], flops, peak)
            if "median_ms" in modes[mode]:
                log(
                    f"  median {modes[mode]['median_ms']:.2f} ms over {modes[mode]['runs']} runs"
                    + (f", {modes[mode]['achieved_tflops']:.4g} TFLOP/s" if "achieved_tflops" in modes[mode] else "")
                )
        except Exception as error:  # noqa: BLE001 - reported in the JSON
            if not is_oom(error):
                traceback.print_exc(file=sys.stderr)
            modes[mode] = error_entry(error)
            log(f"  failed: {modes[mode]}")
        free_memory(device)
    result["modes"] = {m: modes[m] for m in args.modes}

    sampled = [m for m in ("sample_cached", "sample_uncached") if m in args.modes]
    if sampled and not args.no_consistency_check:
        result["cached_vs_uncached"] = consistency(model, inputs, outputs, num_steps, device)
    del inputs, train_inputs, outputs
    free_memory(device)
    if find_batch:
        result["max_batch"] = {}
        for checkpointing in (False, True):
            key = "with_gradient_checkpointing" if checkpointing else "without_gradient_checkpointing"
            log(
                f"{config_name}/{dtype_name}: largest train batch {key.replace('_', ' ')} "
                f"(limit {args.max_batch_limit}, {args.optimizer})"
            )
            try:
                result["max_batch"][key] = find_max_batch(model, cfg, dtype, args, device, checkpointing)
                log(f"  max batch {result['max_batch'][key]['max_batch']}")
            except Exception as error:  # noqa: BLE001 - reported in the JSON
                traceback.print_exc(file=sys.stderr)
                result["max_batch"][key] = error_entry(error)
            free_memory(device)
    elif args.find_max_batch:
        result["max_batch"] = {"skipped": "measured for the eager (not compiled) combination"}
    del model
    free_memory(device)
    return result


# ---- the target suite -------------------------------------------------------------------------------------------
# name -> option overrides; every target runs bfloat16, eager, with --mfu. Geometry: 224x224 images
# (the pi0 preset's), 20 text tokens, 10 flow steps. Training: bitsandbytes AdamW8bit, full VLM
# fine-tuning (everything but frozen_parameter_names() trains, SigLIP included), no checkpointing.
SUITE_TARGETS: dict[str, dict[str, Any]] = {
    "inference_b1": dict(batch_size=1, num_cameras=1, horizon_steps=4, modes=["sample_cached"]),
    "inference_b8_chunk50_3cams": dict(batch_size=8, num_cameras=3, horizon_steps=50, modes=["sample_cached"]),
    "precision_gap": dict(batch_size=8, num_cameras=1, horizon_steps=4, modes=["precision_gap"]),
    "train_b16": dict(train_batch_size=16, num_cameras=1, horizon_steps=4, modes=["train_step"]),
    "train_b32": dict(train_batch_size=32, num_cameras=1, horizon_steps=4, modes=["train_step"]),
    "max_batch": dict(num_cameras=1, horizon_steps=4, modes=[], find_max_batch=True),
}
SUITE_COMMON: dict[str, Any] = dict(
    dtype=["bfloat16"],
    compile=False,
    mfu=True,
    max_text_tokens=20,
    num_steps=10,
    optimizer="adamw8bit",
    gradient_checkpointing=False,
    no_consistency_check=True,
    find_max_batch=False,
)


def run_suite(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results, summary = [], {}
    for config_name in args.config:
        for target, overrides in SUITE_TARGETS.items():
            options = {**vars(args), **SUITE_COMMON, **overrides, "target": target}
            if overrides.get("train_batch_size") is None:
                options["train_batch_size"] = options["batch_size"]
            else:
                options["batch_size"] = 1
            targs = argparse.Namespace(**options)
            log(f"suite target {target} ({config_name})")
            result = bench_combination(config_name, "bfloat16", False, targs, device)
            results.append(result)
            summary[f"{config_name}/{target}"] = summarize(result)
    return results, summary


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The key figures of one suite result."""
    keys = (
        "median_ms",
        "samples_per_s",
        "achieved_tflops",
        "mfu",
        "peak_memory_mib",
        "batch_size",
        "mean_l1",
        "max_abs_diff",
        "meets_target",
        "skipped",
        "error",
    )
    out: dict[str, Any] = {}
    for key in ("skipped", "error"):
        if key in result:
            out[key] = result[key]
    for mode, entry in result.get("modes", {}).items():
        out[mode] = {k: entry[k] for k in keys if k in entry}
    if "max_batch" in result:
        out["max_batch"] = {
            k: v.get("max_batch", v) if isinstance(v, dict) else v for k, v in result["max_batch"].items()
        }
    if "peak_matmul" in result:
        out["peak_tflops"] = result["peak_matmul"].get("tflops")
    return out
