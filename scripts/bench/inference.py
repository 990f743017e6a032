"""Latency, throughput and peak memory of the pi0 model: KV-cached and uncached action sampling, train step.

Usage:
    uv run scripts/bench/inference.py [--config tiny small pi0] [--device cpu|cuda] [--dtype float32 bfloat16]
        [--compile] [--batch_size B] [--num_cameras N] [--horizon_steps H] [--num_steps K]
        [--warmup W] [--runs R] [--modes sample_cached sample_uncached train_step]
        [--train_batch_size B] [--optimizer adamw|adamw8bit] [--gradient_checkpointing] [--output FILE]

Examples:
    uv run scripts/bench/inference.py --config tiny small --runs 5
    uv run scripts/bench/inference.py --config pi0 --modes sample_cached --runs 3 --warmup 1
    uv run scripts/bench/inference.py --config pi0 --device cuda --dtype float32 bfloat16 --compile

Every (config, dtype, compile) combination builds a randomly initialized model once (fixed seed) and
times each mode: `warmup` untimed calls, then `runs` timed calls. Modes:

    sample_cached    model.sample_actions(..., use_cache=True): prefix encoded once, action tokens per step
    sample_uncached  model.sample_actions(..., use_cache=False): every flow step runs all tokens
    train_step       forward (flow-matching loss) + backward + optimizer.step + zero_grad, with
                     model.frozen_parameter_names() frozen

Reported per mode: latency in ms (median, p10, p90, mean, min, max), samples/s (batch / median
latency), the first warm-up call (includes torch.compile's compilation and optimizer state
allocation), and peak memory: on CUDA torch.cuda.max_memory_allocated after reset_peak_memory_stats
(per mode); on CPU the process's peak resident set size (ru_maxrss), a process-wide high-water mark
that never goes down, so it covers the model build and every earlier mode too. The sampling modes
use one fixed noise tensor, and the entry reports the max abs difference between cached and
uncached sampling from that noise (computed with a single flow step when only one of the two
sampling modes is timed). A combination or mode that is estimated not to fit in memory is reported
as {"skipped": reason}; out-of-memory errors and other failures are reported as {"error": ...}.

Exactly one JSON document goes to stdout (a header and the list of results); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch

from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero
from pg_vla.utils.machine import cpu_model_name, current_rss_mib, peak_rss_mib
from pg_vla.utils.stdout import stdout_to_stderr

MODES = ("sample_cached", "sample_uncached", "train_step")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GIB = 1024**3
MIB = 1024**2


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- environment ----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation can still get: free GPU memory, or MemAvailable capped by the cgroup limit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        return free
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        available = min(available if available is not None else limit - used, limit - used)
    return available if available is not None else 1 << 62


def total_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text)


def error_entry(error: BaseException) -> dict[str, Any]:
    kind = "out_of_memory" if is_oom(error) else type(error).__name__
    message = str(error).strip().splitlines()
    return {"error": kind, "message": message[0][:500] if message else ""}


# ---- statistics -------------------------------------------------------------------------------------
def latency_stats(seconds: list[float], batch: int) -> dict[str, Any]:
    ms = np.asarray(seconds) * 1000.0
    median = float(np.median(ms))
    return {
        "runs": len(seconds),
        "median_ms": round(median, 3),
        "p10_ms": round(float(np.percentile(ms, 10)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
        "samples_per_s": round(batch * 1000.0 / median, 3) if median > 0 else None,
    }


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, runs: int,
               max_seconds: float | None) -> tuple[dict[str, Any], Any, list[float]]:
    """Warm-up calls, then timed calls; -> (timing fields, output of the last call, seconds per timed call).

    Each timed call is bracketed by device synchronizations, so it is the end-to-end latency of the
    call including Python overhead and kernel launches.
    """
    out, first_call_ms = None, None
    for i in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        if i == 0:
            first_call_ms = (time.perf_counter() - start) * 1000.0
    seconds: list[float] = []
    budget_start = time.perf_counter()
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if max_seconds and time.perf_counter() - budget_start > max_seconds:
            break
    fields = {"warmup": warmup, "first_call_ms": None if first_call_ms is None else round(first_call_ms, 3)}
    return fields, out, seconds


@contextmanager
def memory_probe(device: torch.device, into: dict[str, Any]):
    """Peak memory of the enclosed work, written into `into` on exit (also after an exception)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            synchronize(device)
            into["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
            into["memory_allocated_before_mib"] = round(before / MIB, 1)
            into["peak_memory_kind"] = "torch.cuda.max_memory_allocated (this mode)"
        else:
            into["peak_memory_mib"] = round(peak_rss_mib(), 1)
            into["rss_after_mib"] = None if (rss := current_rss_mib()) is None else round(rss, 1)
            into["peak_memory_kind"] = "process peak RSS (ru_maxrss, process-wide high-water mark)"


# ---- inputs -------------------------------------------------------------------------------------------
def make_inputs(cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random observation and action chunk; text of random length (right padded)."""
    s, lt = cfg.vision.image_size, cfg.max_text_tokens

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    lengths = torch.randint(max(1, lt // 2), lt + 1, (batch, 1), generator=generator)
    inputs = {
        "images": rand(batch, cfg.num_cameras, 3, s, s).to(dtype),
        "text_ids": torch.randint(0, cfg.vlm.vocab_size, (batch, lt), generator=generator),
        "text_mask": torch.arange(lt).expand(batch, -1) < lengths,
        "proprio": rand(batch, cfg.cond_steps, cfg.proprio_dim),
        "actions": rand(batch, cfg.horizon_steps, cfg.action_dim),
        "noise": torch.randn(batch, cfg.horizon_steps, cfg.action_dim, generator=generator),
    }
    return {k: v.to(device) for k, v in inputs.items()}


# ---- memory estimates ----------------------------------------------------------------------------------
def bytes_per_element(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def trainable_count(model: PiZero) -> int:
    frozen = set(model.frozen_parameter_names())
    return sum(p.numel() for n, p in model.named_parameters() if n not in frozen)


def train_extra_bytes(trainable: int, dtype: torch.dtype, optimizer: str) -> int:
    """Gradients plus optimizer state for the trainable parameters."""
    size = bytes_per_element(dtype)
    state = 2 * size if optimizer == "adamw" else 2  # AdamW: exp_avg + exp_avg_sq in the parameter dtype
    return trainable * (size + state)


def activation_bytes(cfg: PiZeroConfig, batch: int, dtype: torch.dtype, checkpointing: bool) -> int:
    """Rough size of the activations a training step keeps for backward (x2 for temporaries).

    Per token and layer a transformer block keeps about 12 hidden-sized and 3 (GeGLU; 2 for the
    SigLIP MLP) MLP-sized tensors; with checkpointing only each layer's input plus one layer.
    """
    vlm, act, vis = cfg.vlm, cfg.action_gemma(), cfg.vision
    layers = [  # (tokens per sample, layers, elements per token and layer, layer input width)
        (cfg.prefix_len, vlm.num_layers, 12 * vlm.hidden_size + 3 * vlm.intermediate_size, vlm.hidden_size),
        (cfg.cond_steps + cfg.horizon_steps, vlm.num_layers, 12 * act.hidden_size + 3 * act.intermediate_size,
         act.hidden_size),
        (cfg.num_image_tokens, vis.num_layers, 12 * vis.hidden_size + 2 * vis.intermediate_size, vis.hidden_size),
    ]
    if checkpointing:
        elements = sum(t * (n * width + per_layer) for t, n, per_layer, width in layers)
    else:
        elements = sum(t * n * per_layer for t, n, per_layer, _ in layers)
    return 2 * batch * elements * bytes_per_element(dtype)


def check_fits(needed: int, device: torch.device, what: str) -> str | None:
    """A skip reason when `needed` bytes (plus headroom) would take more than 85% of what is available.

    The margin is deliberate: on CPU running out of memory is not an exception but the OOM killer.
    """
    available = available_bytes(device)
    headroom = GIB if device.type == "cpu" else GIB // 2
    if needed + headroom > 0.85 * available:
        return (f"{what}: estimated {needed / GIB:.1f} GiB needed (+{headroom / GIB:.1f} GiB headroom), "
                f"{available / GIB:.1f} GiB available on {device.type}")
    return None


# ---- benchmark ------------------------------------------------------------------------------------------
def build_config(name: str, args: argparse.Namespace) -> PiZeroConfig:
    overrides: dict[str, Any] = {}
    if args.num_cameras is not None:
        overrides["num_cameras"] = args.num_cameras
    if args.horizon_steps is not None:
        overrides["horizon_steps"] = args.horizon_steps
    return PiZeroConfig.preset(name, **overrides)


def make_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-5, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


def compile_model(model: PiZero, mode: str) -> None:
    """torch.compile the callables that do the model's work; sample_actions and forward look them up on
    the instance, so the compiled versions are used by every mode."""
    for name in ("encode_prefix", "denoise_step", "predict_velocity"):
        setattr(model, name, torch.compile(getattr(model, name), mode=mode))


def bench_sampling(model: PiZero, inputs: dict[str, torch.Tensor], use_cache: bool, num_steps: int,
                   args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Any], torch.Tensor | None]:
    model.eval()

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model.sample_actions(inputs["images"], inputs["text_ids"], inputs["text_mask"],
                                        inputs["proprio"], noise=inputs["noise"], num_steps=num_steps,
                                        use_cache=use_cache)

    entry: dict[str, Any] = {}
    with memory_probe(device, entry):
        fields, out, seconds = time_calls(call, device, args.warmup, args.runs, args.max_seconds_per_mode)
    entry = {**latency_stats(seconds, args.batch_size), **fields, **entry}
    return entry, out


def bench_train(model: PiZero, inputs: dict[str, torch.Tensor], args: argparse.Namespace,
                device: torch.device) -> dict[str, Any]:
    frozen = set(model.frozen_parameter_names())
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
        if name not in frozen:
            params.append(p)
    model.train()
    model.set_gradient_checkpointing(args.gradient_checkpointing)
    entry: dict[str, Any] = {}
    optimizer = None
    try:
        with memory_probe(device, entry):
            optimizer = make_optimizer(args.optimizer, params)

            def step() -> torch.Tensor:
                loss = model(inputs["images"], inputs["text_ids"], inputs["text_mask"], inputs["proprio"],
                             inputs["actions"])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss.detach()

            fields, loss, seconds = time_calls(step, device, args.warmup, args.runs, args.max_seconds_per_mode)
        entry = {**latency_stats(seconds, args.train_batch_size), **fields, **entry}
        entry["last_loss"] = float(loss) if math.isfinite(float(loss)) else str(float(loss))
    finally:
        # Free gradients and optimizer state before the next combination.
        for p in params:
            p.grad = None
        del optimizer
        model.set_gradient_checkpointing(False)
        model.eval()
    entry.update(batch_size=args.train_batch_size, optimizer=args.optimizer,
                 gradient_checkpointing=args.gradient_checkpointing, trainable_parameters=sum(p.numel() for p in params))
    return entry


def bench_combination(config_name: str, dtype_name: str, use_compile: bool, args: argparse.Namespace,
                      device: torch.device) -> dict[str, Any]:
    dtype = DTYPES[dtype_name]
    cfg = build_config(config_name, args)
    num_steps = args.num_steps or cfg.num_inference_steps
    result: dict[str, Any] = {
        "config": config_name, "dtype": dtype_name, "compile": use_compile, "device": device.type,
        "batch_size": args.batch_size, "num_cameras": cfg.num_cameras, "horizon_steps": cfg.horizon_steps,
        "num_steps": num_steps, "seq_len": cfg.seq_len, "prefix_len": cfg.prefix_len,
    }
    with torch.device("meta"):
        meta = PiZero(cfg)
    counts = meta.parameter_counts()
    trainable = trainable_count(meta)
    del meta
    result["parameters"] = counts
    total = counts["total"]

    free_memory(device)
    weights = total * bytes_per_element(dtype)
    train_need = train_extra_bytes(trainable, dtype, args.optimizer) + activation_bytes(
        cfg, args.train_batch_size, dtype, args.gradient_checkpointing)
    train_what = (f"train step (gradients + {args.optimizer} states for {trainable / 1e6:.0f}M trainable "
                  f"{dtype_name} parameters + activations at batch {args.train_batch_size})")
    modes: dict[str, Any] = {}
    if "train_step" in args.modes and not args.no_memory_check:
        # Checked before building too, so that a combination whose only mode cannot fit is not built.
        reason = check_fits(weights + train_need, device, f"{train_what} with the {weights / GIB:.1f} GiB model")
        if reason:
            modes["train_step"] = {"skipped": reason}
            log(f"{config_name}/{dtype_name}/compile={use_compile}: train_step skipped ({reason})")
            if all(m in modes for m in args.modes):
                result["modes"] = modes
                return result
    # The model is built in float32 and then cast, so building needs 4 bytes per parameter.
    reason = None if args.no_memory_check else check_fits(int(total * 4 * 1.05), device,
                                                               "model build (float32, cast afterwards)")
    if reason:
        log(f"{config_name}/{dtype_name}/compile={use_compile}: skipped ({reason})")
        result["skipped"] = reason
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
            result["model_memory_mib"] = round(sum(t.numel() * t.element_size() for t in
                                                   [*model.parameters(), *model.buffers()]) / MIB, 1)
        if use_compile:
            compile_model(model, args.compile_mode)
        generator = torch.Generator().manual_seed(args.seed)
        inputs = make_inputs(cfg, args.batch_size, dtype, device, generator)
        train_inputs = inputs if args.train_batch_size == args.batch_size else make_inputs(
            cfg, args.train_batch_size, dtype, device, generator)
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        if not is_oom(error):
            traceback.print_exc(file=sys.stderr)
        result.update(error_entry(error))
        del model
        free_memory(device)
        return result

    outputs: dict[str, torch.Tensor] = {}
    for mode in args.modes:
        if mode in modes:  # skipped before the build
            continue
        log(f"{config_name}/{dtype_name}/compile={use_compile}: {mode} "
            f"(warmup {args.warmup}, runs {args.runs})")
        free_memory(device)
        try:
            if mode == "train_step":
                reason = None if args.no_memory_check else check_fits(train_need, device, train_what)
                if reason:
                    modes[mode] = {"skipped": reason}
                    log(f"  skipped ({reason})")
                    continue
                modes[mode] = bench_train(model, train_inputs, args, device)
            else:
                modes[mode], out = bench_sampling(model, inputs, mode == "sample_cached", num_steps, args, device)
                outputs[mode] = out.float().cpu()
            if "median_ms" in modes[mode]:
                log(f"  median {modes[mode]['median_ms']:.2f} ms over {modes[mode]['runs']} runs")
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
    del model, inputs, train_inputs, outputs
    free_memory(device)
    return result


def consistency(model: PiZero, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], num_steps: int,
                device: torch.device) -> dict[str, Any]:
    """Max abs difference between cached and uncached sampling from the same noise."""
    try:
        if "sample_cached" in outputs and "sample_uncached" in outputs:
            a, b, steps = outputs["sample_cached"], outputs["sample_uncached"], num_steps
        else:  # only one sampling mode was timed: compare both with a single (cheap) flow step
            steps = 1
            model.eval()
            with torch.inference_mode():
                a, b = (model.sample_actions(inputs["images"], inputs["text_ids"], inputs["text_mask"],
                                             inputs["proprio"], noise=inputs["noise"], num_steps=1,
                                             use_cache=use_cache).float().cpu() for use_cache in (True, False))
        return {"max_abs_diff": float((a - b).abs().max()), "num_steps": steps}
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        return error_entry(error)


# ---- command line -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["tiny", "small"], choices=("tiny", "small", "pi0"),
                        help="model presets (default: tiny small)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=tuple(DTYPES),
                        help="parameter dtypes (default: float32)")
    parser.add_argument("--compile", action="store_true",
                        help="also measure with torch.compile (encode_prefix, denoise_step, predict_velocity)")
    parser.add_argument("--compile_mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    parser.add_argument("--batch_size", type=int, default=1, help="sampling batch size (default 1)")
    parser.add_argument("--train_batch_size", type=int, default=None, help="train step batch size (default: batch_size)")
    parser.add_argument("--num_cameras", type=int, default=None, help="override the preset's num_cameras")
    parser.add_argument("--horizon_steps", type=int, default=None, help="override the preset's horizon_steps")
    parser.add_argument("--num_steps", type=int, default=None, help="flow steps (default: the config's, 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per mode (default 3)")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per mode (default 20)")
    parser.add_argument("--max_seconds_per_mode", type=float, default=None,
                        help="stop timing a mode after this many seconds of timed runs (at least one run)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw",
                        help="train step optimizer: torch AdamW or bitsandbytes AdamW8bit")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="train step with gradient checkpointing")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for float32 on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_memory_check", action="store_true",
                        help="run combinations even when the memory estimate says they will not fit")
    parser.add_argument("--no_consistency_check", action="store_true",
                        help="do not report the cached vs uncached sampling difference")
    parser.add_argument("--output", default=None, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    if args.train_batch_size is None:
        args.train_batch_size = args.batch_size
    for name in ("batch_size", "train_batch_size", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.num_steps is not None and args.num_steps < 1:
        parser.error("--num_steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    args.config = list(dict.fromkeys(args.config))
    args.dtype = list(dict.fromkeys(args.dtype))
    args.modes = [m for m in MODES if m in args.modes]
    return args


def header(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    total = total_memory_bytes(device)
    head = {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device.type,
        "device_name": device_name(device),
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device_memory_gib": None if total is None else round(total / GIB, 1),
        "load_average": _load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "options": {k: v for k, v in vars(args).items() if k != "output"},
    }
    if device.type == "cuda":
        head["cuda_version"] = torch.version.cuda
        head["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return head


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with stdout_to_stderr() as real_stdout:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.tf32:
            torch.set_float32_matmul_precision("high")
        device = torch.device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        document: dict[str, Any] = {"header": header(args, device), "results": []}
        started = time.perf_counter()
        for config_name in args.config:
            for dtype_name in args.dtype:
                for use_compile in ((False, True) if args.compile else (False,)):
                    if use_compile:
                        torch._dynamo.reset()
                    document["results"].append(bench_combination(config_name, dtype_name, use_compile, args, device))
        document["header"]["total_s"] = round(time.perf_counter() - started, 1)
        document["header"]["load_average_at_end"] = _load_average()
        text = json.dumps(_finite(document), indent=2)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")
            log(f"wrote {args.output}")
        real_stdout.write(text + "\n")
        real_stdout.flush()


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine makes timings noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    main()
