"""Latency, throughput and peak memory of the pi0 model: KV-cached and uncached action sampling, train step.

Usage:
    uv run scripts/bench/inference.py [--config tiny small pi0] [--device cpu|cuda] [--dtype float32 bfloat16]
        [--compile] [--batch_size B] [--num_cameras N] [--horizon_steps H] [--max_text_tokens L] [--num_steps K]
        [--warmup W] [--runs R] [--modes sample_cached sample_uncached train_step precision_gap]
        [--train_batch_size B] [--optimizer adamw|adamw8bit] [--gradient_checkpointing] [--output FILE]
        [--mfu] [--find_max_batch [--max_batch_limit N]] [--profile DIR] [--suite targets]

Examples:
    uv run scripts/bench/inference.py --config tiny small --runs 5
    uv run scripts/bench/inference.py --config pi0 --modes sample_cached --runs 3 --warmup 1
    uv run scripts/bench/inference.py --config pi0 --device cuda --dtype float32 bfloat16 --compile
    uv run scripts/bench/inference.py --config pi0 --device cuda --dtype bfloat16 --mfu --find_max_batch
    uv run scripts/bench/inference.py --suite targets --device cuda --output targets.json
    uv run scripts/bench/inference.py --suite targets --device cpu --config tiny --runs 2 --warmup 1

Every (config, dtype, compile) combination builds a randomly initialized model once (fixed seed) and
times each mode: `warmup` untimed calls, then `runs` timed calls. Modes:

    sample_cached    model.sample_actions(..., use_cache=True): prefix encoded once, action tokens per step
    sample_uncached  model.sample_actions(..., use_cache=False): every flow step runs all tokens
    train_step       forward (flow-matching loss) + backward + optimizer.step + zero_grad, with
                     model.frozen_parameter_names() frozen
    precision_gap    not timed: bf16 KV-cached sampling against fp32 uncached sampling (the reference)
                     from the same weights and noise; mean L1 and max abs difference in normalized
                     action units (the fp32 model is built separately, then cast to bf16)

Reported per mode: latency in ms (median, p10, p90, mean, min, max), samples/s (batch / median
latency), the first warm-up call (includes torch.compile's compilation and optimizer state
allocation), and peak memory: on CUDA torch.cuda.max_memory_allocated after reset_peak_memory_stats
(per mode); on CPU the process's peak resident set size (ru_maxrss), a process-wide high-water mark
that never goes down, so it covers the model build and every earlier mode too. The sampling modes
use one fixed noise tensor, and the entry reports the max abs difference between cached and
uncached sampling from that noise (computed with a single flow step when only one of the two
sampling modes is timed). A combination or mode that is estimated not to fit in memory is reported
as {"skipped": reason}; out-of-memory errors and other failures are reported as {"error": ...}.

Options that add to the entries:
    --mfu             measures the device's dense matmul peak once per dtype (square matmuls, median
                      after warm-up) into the result's `peak_matmul`; train_step entries get
                      `flops_per_sample` (analytic model FLOPs, pg_vla.model.vla.flops), `achieved_tflops`
                      and `mfu`; sampling entries `flops` (per call), `achieved_tflops` and `mfu`
    --find_max_batch  the largest train batch that fits (doubling, then bisection over train steps with
                      the configured optimizer and dtype), with and without gradient checkpointing, in
                      the result's `max_batch`; capped by --max_batch_limit (CPU: 64, CUDA: 1024)
    --profile DIR     torch.profiler over a few calls of each timed mode after its timing: one chrome
                      trace per mode in DIR and the top ops by self time in the mode's `profile`
    --suite targets   the target set for the full-size pi0 preset (--config picks another preset for
                      a smoke run): see SUITE_TARGETS; adds a `summary` of the key figures
On CUDA every timed mode also reports CUDA-event timings (`cuda_event_ms`) and each result lists which
scaled_dot_product_attention backends accept the model's attention calls (`sdpa_backends`).

Exactly one JSON document goes to stdout (a header and the list of results); progress goes to stderr.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

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

from pg_vla.model.vla.attention_mask import ACTION_BLOCK, IMAGE_TEXT_BLOCK, PROPRIO_BLOCK, block_attention_mask
from pg_vla.model.vla.config import PRESETS, PiZeroConfig
from pg_vla.model.vla.flops import sampling_flops, train_step_flops
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.optim import OptimizerConfig, freeze_parameters, make_optimizer
from pg_vla.utils.machine import cpu_model_name, current_rss_mib, peak_rss_mib
from pg_vla.utils.stdout import stdout_to_stderr

TIMED_MODES = ("sample_cached", "sample_uncached", "train_step")
MODES = (*TIMED_MODES, "precision_gap")
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
        isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    )


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


def time_calls(
    fn: Callable[[], Any], device: torch.device, warmup: int, runs: int, max_seconds: float | None
) -> tuple[dict[str, Any], Any, list[float]]:
    """Warm-up calls, then timed calls; -> (timing fields, output of the last call, seconds per timed call).

    Each timed call is bracketed by device synchronizations, so it is the end-to-end latency of the
    call including Python overhead and kernel launches. On CUDA, CUDA events recorded around each
    timed call give the GPU-side time as well (`cuda_event_ms`).
    """
    cuda = device.type == "cuda"
    event_ms: list[float] = []
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
        if cuda:
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record()
        start = time.perf_counter()
        out = fn()
        if cuda:
            events[1].record()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if cuda:
            event_ms.append(events[0].elapsed_time(events[1]))
        if max_seconds and time.perf_counter() - budget_start > max_seconds:
            break
    fields: dict[str, Any] = {
        "warmup": warmup,
        "first_call_ms": None if first_call_ms is None else round(first_call_ms, 3),
    }
    if event_ms:
        ms = np.asarray(event_ms)
        fields["cuda_event_ms"] = {
            "median": round(float(np.median(ms)), 3),
            "p10": round(float(np.percentile(ms, 10)), 3),
            "p90": round(float(np.percentile(ms, 90)), 3),
            "min": round(float(ms.min()), 3),
        }
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
def make_inputs(
    cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator
) -> dict[str, torch.Tensor]:
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


_COUNTS: dict[str, tuple[dict[str, int], int]] = {}


def parameter_counts(cfg: PiZeroConfig) -> tuple[dict[str, int], int]:
    """(model.parameter_counts(), trainable parameters) from a meta-device build, cached per config."""
    key = cfg.to_json()
    if key not in _COUNTS:
        with torch.device("meta"):
            meta = PiZero(cfg)
        _COUNTS[key] = meta.parameter_counts(), trainable_count(meta)
    return _COUNTS[key]


def trainable_count(model: PiZero) -> int:
    """Parameters a full fine-tuning trains: everything but `frozen_parameter_names()`."""
    counts = model.parameter_counts()
    return counts["vlm_trainable"] + counts["action_expert"]


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
        (
            cfg.cond_steps + cfg.horizon_steps,
            vlm.num_layers,
            12 * act.hidden_size + 3 * act.intermediate_size,
            act.hidden_size,
        ),
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
        return (
            f"{what}: estimated {needed / GIB:.1f} GiB needed (+{headroom / GIB:.1f} GiB headroom), "
            f"{available / GIB:.1f} GiB available on {device.type}"
        )
    return None


# ---- benchmark ------------------------------------------------------------------------------------------
def build_config(name: str, args: argparse.Namespace) -> PiZeroConfig:
    overrides: dict[str, Any] = {}
    for key in ("num_cameras", "horizon_steps", "max_text_tokens"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return PiZeroConfig.preset(name, **overrides)


def bench_optimizer(name: str, model: PiZero) -> torch.optim.Optimizer:
    """The trainer's optimizer (`pg_vla.training.optim.make_optimizer`: its groups, kernels, and fp32 masters
    for bf16 weights), at a small learning rate."""
    return make_optimizer(model, OptimizerConfig(name=name, vlm_lr=1e-5, action_expert_lr=1e-5))


def compile_model(model: PiZero, mode: str) -> None:
    """torch.compile the callables that do the model's work; sample_actions and forward look them up on
    the instance, so the compiled versions are used by every mode."""
    for name in ("encode_prefix", "denoise_step", "predict_velocity"):
        setattr(model, name, torch.compile(getattr(model, name), mode=mode))


def trainable_parameters(model: PiZero) -> list[torch.nn.Parameter]:
    """Freeze what the trainer freezes for full fine-tuning; -> the trainable parameters."""
    frozen = set(freeze_parameters(model, train_vlm=True))
    return [p for name, p in model.named_parameters() if name not in frozen]


# ---- dense matmul peak and FLOP rates ----------------------------------------------------------------------
_PEAKS: dict[tuple[str, str, int], dict[str, Any]] = {}


def measure_peak_tflops(
    device: torch.device, dtype: torch.dtype, size: int, warmup: int = 3, runs: int = 10
) -> dict[str, Any]:
    """Dense (size x size) @ (size x size) matmul rate in TFLOP/s: median over `runs` timed calls after
    `warmup` calls; on CUDA each timed call is 10 back-to-back matmuls between CUDA events.
    Measured once per (device, dtype, size) and process; float32 on CUDA follows the TF32 setting."""
    key = (str(device), str(dtype), size)
    if key in _PEAKS:
        return _PEAKS[key]
    cuda = device.type == "cuda"
    repeats = 10 if cuda else 1
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    synchronize(device)
    seconds = []
    for _ in range(runs):
        if cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
            for _ in range(repeats):
                torch.mm(a, b, out=out)
            end_event.record()
            synchronize(device)
            seconds.append(start_event.elapsed_time(end_event) / 1000.0 / repeats)
        else:
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds.append(time.perf_counter() - start)
    del a, b, out
    median = float(np.median(seconds))
    peak = {
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_size": size,
        "runs": runs,
        "median_ms": round(median * 1000.0, 3),
        "tflops": round(2.0 * size**3 / median / 1e12, 4),
        "max_tflops": round(2.0 * size**3 / min(seconds) / 1e12, 4),
    }
    if cuda:
        peak["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    _PEAKS[key] = peak
    return peak


def add_rates(entry: dict[str, Any], flops_per_call: float, peak: dict[str, Any] | None) -> None:
    """achieved_tflops (FLOPs per call / median latency) and mfu (achieved / measured peak)."""
    if "median_ms" not in entry or not entry["median_ms"]:
        return
    achieved = flops_per_call / (entry["median_ms"] / 1000.0) / 1e12
    entry["achieved_tflops"] = round(achieved, 6)
    if peak is not None and peak.get("tflops"):
        entry["mfu"] = round(achieved / peak["tflops"], 6)


# ---- profiler -------------------------------------------------------------------------------------------------
def profile_calls(fn: Callable[[], Any], device: torch.device, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """torch.profiler over `--profile_calls` calls of `fn` (already warmed up): a chrome trace in
    `--profile` and the top 15 ops by self time (device time on CUDA, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(args.profile_calls):
            fn()
            synchronize(device)
    os.makedirs(args.profile, exist_ok=True)
    path = os.path.join(args.profile, f"{name}.json")
    prof.export_chrome_trace(path)
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort_key), reverse=True)[:15]
    top = []
    for e in events:
        row = {"name": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000.0, 3)}
        if cuda:
            row["self_device_ms"] = round(e.self_device_time_total / 1000.0, 3)
        top.append(row)
    return {"trace": path, "calls": args.profile_calls, "sorted_by": sort_key.replace("_total", ""), "top_ops": top}


def maybe_profile(
    fn: Callable[[], Any], device: torch.device, args: argparse.Namespace, name: str, entry: dict[str, Any]
) -> None:
    if not args.profile:
        return
    log(f"  profiling {args.profile_calls} calls -> {args.profile}/{name}.json")
    try:
        entry["profile"] = profile_calls(fn, device, args, name)
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        traceback.print_exc(file=sys.stderr)
        entry["profile"] = error_entry(error)


# ---- timed modes ------------------------------------------------------------------------------------------------
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
        with torch.inference_mode():
            return model.sample_actions(
                inputs["images"],
                inputs["text_ids"],
                inputs["text_mask"],
                inputs["proprio"],
                noise=inputs["noise"],
                num_steps=num_steps,
                use_cache=use_cache,
            )

    entry: dict[str, Any] = {}
    with memory_probe(device, entry):
        fields, out, seconds = time_calls(call, device, args.warmup, args.runs, args.max_seconds_per_mode)
    entry = {**latency_stats(seconds, args.batch_size), **fields, **entry}
    maybe_profile(call, device, args, label, entry)
    return entry, out


def make_train_step(
    model: PiZero, inputs: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        loss = model(inputs["images"], inputs["text_ids"], inputs["text_mask"], inputs["proprio"], inputs["actions"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def bench_train(
    model: PiZero,
    inputs: dict[str, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
    label: str = "train_step",
) -> dict[str, Any]:
    params = trainable_parameters(model)
    model.train()
    model.set_gradient_checkpointing(args.gradient_checkpointing)
    entry: dict[str, Any] = {}
    optimizer = None
    try:
        with memory_probe(device, entry):
            optimizer = bench_optimizer(args.optimizer, model)
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
        optimizer=args.optimizer,
        gradient_checkpointing=args.gradient_checkpointing,
        trainable_parameters=sum(p.numel() for p in params),
    )
    return entry


# ---- precision gap ---------------------------------------------------------------------------------------------
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

        def sample(images: torch.Tensor, use_cache: bool) -> torch.Tensor:
            with torch.inference_mode():
                return (
                    model.sample_actions(
                        images,
                        inputs["text_ids"],
                        inputs["text_mask"],
                        inputs["proprio"],
                        noise=inputs["noise"],
                        num_steps=num_steps,
                        use_cache=use_cache,
                    )
                    .float()
                    .cpu()
                )

        with full_float32_matmuls():
            reference = sample(inputs["images"], use_cache=False)
            fp32_cached = sample(inputs["images"], use_cache=True)
        model.to(torch.bfloat16)
        images = inputs["images"].to(torch.bfloat16)
        bf16_cached = sample(images, use_cache=True)
        bf16_uncached = sample(images, use_cache=False)
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


# ---- largest train batch ----------------------------------------------------------------------------------------
def try_train_batch(
    model: PiZero,
    cfg: PiZeroConfig,
    batch: int,
    dtype: torch.dtype,
    args: argparse.Namespace,
    device: torch.device,
    checkpointing: bool,
) -> dict[str, Any]:
    """`--max_batch_steps` train steps at `batch` -> {"batch", "fits", peak memory, ...}; frees everything after."""
    row: dict[str, Any] = {"batch": batch}
    if device.type == "cpu" and not args.no_memory_check:
        # On CPU running out of memory is the OOM killer, not an exception: check the estimate first.
        need = train_extra_bytes(trainable_count(model), dtype, args.optimizer) + activation_bytes(
            cfg, batch, dtype, checkpointing
        )
        reason = check_fits(need, device, f"train step at batch {batch}")
        if reason:
            row.update(fits=False, reason=f"memory estimate: {reason}")
            return row
    params = trainable_parameters(model)
    model.train()
    model.set_gradient_checkpointing(checkpointing)
    free_memory(device)
    optimizer, inputs, step, failure = None, None, None, None
    start = time.perf_counter()
    try:
        with memory_probe(device, row):
            inputs = make_inputs(cfg, batch, dtype, device, torch.Generator().manual_seed(args.seed))
            optimizer = bench_optimizer(args.optimizer, model)
            step = make_train_step(model, inputs, optimizer)
            for _ in range(args.max_batch_steps):
                step()
            synchronize(device)
        row["fits"] = True
    except Exception as error:  # noqa: BLE001 - an OOM is the answer; anything else ends the search
        failure = error_entry(error)
        if not is_oom(error):
            traceback.print_exc(file=sys.stderr)
    # Out of the except block: the exception (and the frames holding tensors) is gone before freeing.
    if failure is not None:
        row.update(fits=False, **failure)
    row["seconds"] = round(time.perf_counter() - start, 2)
    for p in params:
        p.grad = None
    del optimizer, inputs, step
    model.set_gradient_checkpointing(False)
    model.eval()
    free_memory(device)
    return row


def find_max_batch(
    model: PiZero,
    cfg: PiZeroConfig,
    dtype: torch.dtype,
    args: argparse.Namespace,
    device: torch.device,
    checkpointing: bool,
) -> dict[str, Any]:
    """Largest train batch <= the limit that fits: batch 1, 2, 4, ... until one fails (or the limit),
    then bisection between the last fitting and the first failing batch."""
    limit = args.max_batch_limit
    tried: list[dict[str, Any]] = []
    stop: dict[str, Any] = {}

    def fits(batch: int) -> bool:
        row = try_train_batch(model, cfg, batch, dtype, args, device, checkpointing)
        tried.append(row)
        log(f"  max batch (checkpointing={checkpointing}): batch {batch} {'fits' if row['fits'] else 'does not fit'}")
        if not row["fits"] and row.get("error") not in (None, "out_of_memory"):
            stop.update(error=row["error"], message=row.get("message", ""))  # not a memory failure
        return row["fits"]

    good, bad, batch = 0, None, 1
    while batch <= limit and not stop:
        if fits(batch):
            good, batch = batch, batch * 2
        else:
            bad = batch
            break
    if bad is None and good < limit and not stop:  # doubled past the limit: the limit itself
        if fits(limit):
            good = limit
        else:
            bad = limit
    while bad is not None and bad - good > 1 and not stop:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    out: dict[str, Any] = {
        "max_batch": good,
        "limit": limit,
        "hit_limit": good == limit,
        "first_failing_batch": bad,
        "gradient_checkpointing": checkpointing,
        "optimizer": args.optimizer,
        "steps_per_try": args.max_batch_steps,
        "tried": tried,
    }
    if stop:
        out["stopped_by"] = stop
    return out


# ---- attention backends ---------------------------------------------------------------------------------------------
def attention_calls(cfg: PiZeroConfig, batch: int) -> dict[str, tuple[int, int, bool]]:
    """The model's attention calls: name -> (query tokens, key tokens, with backward)."""
    prefix = cfg.prefix_len + cfg.cond_steps
    return {
        "prefix": (prefix, prefix, False),  # encode_prefix (KV cache)
        "denoise": (cfg.horizon_steps, prefix + cfg.horizon_steps, False),  # one denoising step
        "train": (cfg.seq_len, cfg.seq_len, True),
    }  # training / uncached sampling (all tokens)


def sdpa_backends(cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Which scaled_dot_product_attention backends accept the model's attention calls (same q/k/v
    shapes, dtype, GQA and boolean block mask), each forced alone with sdpa_kernel; CUDA only."""
    if device.type != "cuda":
        return {"skipped": "CUDA only (torch.nn.attention.sdpa_kernel backends)"}
    return sdpa_backend_table(cfg, batch, dtype, device)


def _elapsed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """One call of `fn`: CUDA-event time on CUDA, synchronized wall time otherwise."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    fn()
    end_event.record()
    synchronize(device)
    return start_event.elapsed_time(end_event)


def _attention_functions(gqa: bool) -> dict[str, Callable[..., torch.Tensor]]:
    """q (B, H, Tq, Dh), k/v (B, K, Tk, Dh), bool mask -> (B, H, Tq, Dh): the model's attention
    (query heads of a KV group folded into the query axis) and, for comparison, the plain SDPA call
    with enable_gqa that it replaces."""
    import torch.nn.functional as F

    from pg_vla.model.vla.joint_model import fold_query_groups, grouped_query_attention

    def model_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return grouped_query_attention(q, k, v, fold_query_groups(mask, q.shape[1] // k.shape[1]))

    def sdpa_enable_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    return {"grouped_query_attention (model)": model_attention, "sdpa_enable_gqa": sdpa_enable_gqa}


def sdpa_backend_table(cfg: PiZeroConfig, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """sdpa_backends' work on any device (the CPU only has flash and math kernels)."""
    from torch.nn.attention import SDPBackend

    vlm = cfg.vlm
    gqa = vlm.num_heads != vlm.num_kv_heads
    functions = _attention_functions(gqa)
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    lengths = torch.full((batch,), cfg.max_text_tokens)
    lengths[batch // 2 :] = max(1, cfg.max_text_tokens // 2)  # some text padding, as real batches have
    text_valid = torch.arange(cfg.max_text_tokens).expand(batch, -1) < lengths[:, None]
    blocks_all = torch.cat(
        [
            torch.full((cfg.prefix_len,), IMAGE_TEXT_BLOCK),
            torch.full((cfg.cond_steps,), PROPRIO_BLOCK),
            torch.full((cfg.horizon_steps,), ACTION_BLOCK),
        ]
    ).expand(batch, -1)
    valid_all = torch.cat(
        (
            torch.ones(batch, cfg.num_image_tokens, dtype=torch.bool),
            text_valid,
            torch.ones(batch, cfg.cond_steps + cfg.horizon_steps, dtype=torch.bool),
        ),
        dim=1,
    )
    out: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch,
        "num_heads": vlm.num_heads,
        "num_kv_heads": vlm.num_kv_heads,
        "head_dim": vlm.head_dim,
    }
    generator = torch.Generator(device=device).manual_seed(0)
    for name, (q_len, k_len, backward) in attention_calls(cfg, batch).items():
        keys = slice(0, k_len)
        queries = slice(k_len - q_len, k_len)  # prefix/train: all; denoise: the trailing action tokens
        mask = block_attention_mask(blocks_all[:, queries], blocks_all[:, keys], valid_all[:, keys]).to(device)

        def tensor(heads: int, length: int, backward: bool = backward) -> torch.Tensor:
            return torch.randn(
                batch,
                heads,
                length,
                vlm.head_dim,
                device=device,
                dtype=dtype,
                generator=generator,
                requires_grad=backward,
            )

        q, k, v = tensor(vlm.num_heads, q_len), tensor(vlm.num_kv_heads, k_len), tensor(vlm.num_kv_heads, k_len)

        row: dict[str, Any] = {
            "query_tokens": q_len,
            "key_tokens": k_len,
            "backward": backward,
            "mask": f"bool {tuple(mask.shape)}",
        }
        for function_name, attend in functions.items():
            row[function_name] = _backend_row(attend, q, k, v, mask, backward, backends, device)
        out[name] = row
    free_memory(device)
    return out


def _backend_row(
    attend: Callable[..., torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    backward: bool,
    backends: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """backend name -> {"accepted": True, "median_ms"} or {"accepted": False, "error", "reasons"}."""
    import warnings

    from torch.nn.attention import sdpa_kernel

    def call() -> None:
        o = attend(q, k, v, mask)
        if backward:
            o.sum().backward()

    row: dict[str, Any] = {}
    for backend_name, backend in backends.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel(backend):
                    call()
                    synchronize(device)
                    timings = [_elapsed_ms(call, device) for _ in range(5)]
                row[backend_name] = {"accepted": True, "median_ms": round(float(np.median(timings)), 4)}
            except Exception as error:  # noqa: BLE001 - "not accepted" is the answer
                reasons = [str(w.message).strip().splitlines()[0] for w in caught][:3]
                row[backend_name] = {
                    "accepted": False,
                    "error": (str(error).strip().splitlines() or [""])[0][:300],
                    "reasons": reasons,
                }
        for t in (q, k, v):
            t.grad = None
    return row


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
    if "train_step" in args.modes and not args.no_memory_check:
        # Checked before building too, so that a combination whose only mode cannot fit is not built.
        reason = check_fits(weights + train_need, device, f"{train_what} with the {weights / GIB:.1f} GiB model")
        if reason:
            modes["train_step"] = {"skipped": reason}
            log(f"{config_name}/{dtype_name}/compile={use_compile}: train_step skipped ({reason})")
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
            if mode == "train_step":
                reason = None if args.no_memory_check else check_fits(train_need, device, train_what)
                if reason:
                    modes[mode] = {"skipped": reason}
                    log(f"  skipped ({reason})")
                    continue
                modes[mode] = bench_train(model, train_inputs, args, device, f"{label}_{mode}")
                if args.mfu:
                    flops = train_step_flops(cfg)
                    modes[mode]["flops_per_sample"] = flops
                    add_rates(modes[mode], flops * args.train_batch_size, peak)
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
            with torch.inference_mode():
                a, b = (
                    model.sample_actions(
                        inputs["images"],
                        inputs["text_ids"],
                        inputs["text_mask"],
                        inputs["proprio"],
                        noise=inputs["noise"],
                        num_steps=1,
                        use_cache=use_cache,
                    )
                    .float()
                    .cpu()
                    for use_cache in (True, False)
                )
        return {"max_abs_diff": float((a - b).abs().max()), "num_steps": steps}
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        return error_entry(error)


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


# ---- command line -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=None,
        choices=tuple(PRESETS),
        help="model presets (default: tiny small; with --suite: pi0)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", nargs="+", default=["float32"], choices=tuple(DTYPES), help="parameter dtypes (default: float32)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure with torch.compile (encode_prefix, denoise_step, predict_velocity)",
    )
    parser.add_argument(
        "--compile_mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    parser.add_argument("--batch_size", type=int, default=1, help="sampling batch size (default 1)")
    parser.add_argument(
        "--train_batch_size", type=int, default=None, help="train step batch size (default: batch_size)"
    )
    parser.add_argument("--num_cameras", type=int, default=None, help="override the preset's num_cameras")
    parser.add_argument("--horizon_steps", type=int, default=None, help="override the preset's horizon_steps")
    parser.add_argument("--max_text_tokens", type=int, default=None, help="override the preset's max_text_tokens")
    parser.add_argument("--num_steps", type=int, default=None, help="flow steps (default: the config's, 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per mode (default 3)")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per mode (default 20)")
    parser.add_argument(
        "--max_seconds_per_mode",
        type=float,
        default=None,
        help="stop timing a mode after this many seconds of timed runs (at least one run)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(TIMED_MODES),
        choices=MODES,
        help="default: the timed modes (precision_gap only when named)",
    )
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "adamw8bit"),
        default="adamw",
        help="train step optimizer: torch AdamW or bitsandbytes AdamW8bit",
    )
    parser.add_argument("--gradient_checkpointing", action="store_true", help="train step with gradient checkpointing")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for float32 on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no_memory_check",
        action="store_true",
        help="run combinations even when the memory estimate says they will not fit",
    )
    parser.add_argument(
        "--no_consistency_check", action="store_true", help="do not report the cached vs uncached sampling difference"
    )
    parser.add_argument(
        "--mfu",
        action="store_true",
        help="measure the dense matmul peak per dtype; add FLOPs, achieved TFLOP/s and MFU",
    )
    parser.add_argument(
        "--peak_matmul_size",
        type=int,
        default=None,
        help="square matmul size of the peak measurement (default: 8192 on CUDA, 1024 on CPU)",
    )
    parser.add_argument(
        "--find_max_batch",
        action="store_true",
        help="search the largest train batch that fits, with and without gradient checkpointing",
    )
    parser.add_argument(
        "--max_batch_limit",
        type=int,
        default=None,
        help="largest batch the search tries (default: 1024 on CUDA, 64 on CPU)",
    )
    parser.add_argument("--max_batch_steps", type=int, default=2, help="train steps per tried batch (default 2)")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="torch.profiler over a few calls per timed mode: chrome traces into DIR, top ops in the JSON",
    )
    parser.add_argument("--profile_calls", type=int, default=3, help="calls per profiled mode (default 3)")
    parser.add_argument(
        "--suite",
        choices=("targets",),
        default=None,
        help="run a predefined target set (default preset pi0; --config for a smoke run)",
    )
    parser.add_argument("--output", default=None, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = ["pi0"] if args.suite else ["tiny", "small"]
    if args.train_batch_size is None:
        args.train_batch_size = args.batch_size
    if args.max_batch_limit is None:
        args.max_batch_limit = 1024 if args.device == "cuda" else 64
    for name in ("batch_size", "train_batch_size", "runs", "max_batch_limit", "max_batch_steps", "profile_calls"):
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
    args.target = None
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
        "options": {k: v for k, v in vars(args).items() if k not in ("output", "target")},
    }
    if device.type == "cuda":
        head["cuda_version"] = torch.version.cuda
        head["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return head


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # Import what later steps import lazily, then make everything allocated so far (modules, torch's
    # Python state) permanent: the gc.collect() calls between modes then only scan what the benchmark
    # creates, not the whole imported world (seconds per call otherwise).
    import torch._refs  # noqa: F401 - meta-device builds (parameter counts) use it

    if args.optimizer == "adamw8bit" or args.suite:
        try:
            import bitsandbytes  # noqa: F401
        except Exception:  # noqa: BLE001 - the train step reports it
            pass
    if args.profile:
        import torch.profiler  # noqa: F401
    gc.collect()
    gc.freeze()
    try:
        return _run(args)
    finally:
        gc.unfreeze()


def _run(args: argparse.Namespace) -> dict[str, Any]:
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
        if args.suite:
            document["suite"] = args.suite
            document["results"], document["summary"] = run_suite(args, device)
        else:
            for config_name in args.config:
                for dtype_name in args.dtype:
                    for use_compile in (False, True) if args.compile else (False,):
                        if use_compile:
                            torch._dynamo.reset()
                        document["results"].append(
                            bench_combination(config_name, dtype_name, use_compile, args, device)
                        )
        document["header"]["total_s"] = round(time.perf_counter() - started, 1)
        document["header"]["load_average_at_end"] = _load_average()
        document = _finite(document)
        text = json.dumps(document, indent=2)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")
            log(f"wrote {args.output}")
        real_stdout.write(text + "\n")
        real_stdout.flush()
    return document


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
