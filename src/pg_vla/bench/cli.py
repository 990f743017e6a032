"""Latency, throughput and peak memory of the pi0 model: KV-cached and uncached action sampling, train step.

Usage:
    uv run scripts/bench/inference.py [--config tiny small pi0] [--device cpu|cuda] [--dtype float32 bfloat16]
        [--compile] [--batch_size B] [--num_cameras N] [--horizon_steps H] [--max_text_tokens L] [--num_steps K]
        [--warmup W] [--runs R] [--modes sample_cached sample_uncached train_step train_forward_backward precision_gap]
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
    sample_uncached  model.sample_actions(..., use_cache=False): images embedded once, every flow step runs
                     all tokens through the joint transformer
    train_step       forward (flow-matching loss) + backward + gradient clipping (norm 1) + optimizer.step
                     + zero_grad, with model.frozen_parameter_names() frozen
    train_forward_backward   forward + backward only (gradients dropped, no optimizer)
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
    --mfu             measures the device's dense matmul peak once per dtype (square matmuls through the
                      model's own product, pg_vla.model.linear.linear; median after warm-up) into the
                      result's `peak_matmul`; train_step and train_forward_backward entries get
                      `flops_per_sample` (analytic model FLOPs, pg_vla.model.vla.flops), `achieved_tflops`
                      and `mfu`; sampling entries `flops` (per call), `achieved_tflops` and `mfu`;
                      sample_cached and train_step entries also a `roofline`: `peak_gflops` (the
                      measured peak, GFLOP/s), `flops_per_call`, `limit_ms` (flops_per_call / peak: the
                      compute-bound latency) and `achieved_fraction` (limit_ms / median_ms)
    --find_max_batch  the largest train batch that fits (doubling, then bisection over train steps with
                      the configured optimizer and dtype), with and without gradient checkpointing, in
                      the result's `max_batch`; capped by --max_batch_limit (CPU: 64, CUDA: 1024)
    --profile DIR     torch.profiler over a few calls of each timed mode after its timing: one chrome
                      trace per mode in DIR and the top ops by self time in the mode's `profile`
    --suite targets   the target set for the full-size pi0 preset (--config picks another preset for
                      a smoke run): see SUITE_TARGETS in pg_vla/bench/suite.py; adds a `summary` of
                      the key figures
On CUDA every timed mode also reports CUDA-event timings (`cuda_event_ms`) and each result lists which
scaled_dot_product_attention backends accept the model's attention calls (`sdpa_backends`).

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
from typing import Any

import torch

from pg_vla.bench.harness import device_name, log
from pg_vla.bench.memory import GIB, total_memory_bytes
from pg_vla.bench.modes import MODES, TIMED_MODES
from pg_vla.bench.suite import bench_combination, run_suite
from pg_vla.bench.workload import DTYPES
from pg_vla.model.vla.config import PRESETS
from pg_vla.utils.machine import load_average
from pg_vla.utils.stdout import stdout_to_stderr


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
        help="also measure with torch.compile (encode_prefix, denoise_step, predict_velocity, velocity_from_prefix)",
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
        "load_average": load_average(),
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
        document["header"]["load_average_at_end"] = load_average()
        document = _finite(document)
        text = json.dumps(document, indent=2)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")
            log(f"wrote {args.output}")
        real_stdout.write(text + "\n")
        real_stdout.flush()
    return document


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
