"""Compute rates: the device's dense matmul peak and where a timed call stands against it.

Units: FLOPs counted 2mnk per matmul (`pg_vla.model.vla.flops`), rates in TFLOP/s (`tflops`,
`achieved_tflops`) or GFLOP/s (`peak_gflops`), latencies in ms. `mfu` and `achieved_fraction` are
fractions of the measured peak (1.0: every FLOP at the dense matmul rate).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from pg_vla.bench.harness import synchronize
from pg_vla.model.linear import computed_in, linear

_PEAKS: dict[tuple[str, str, int], dict[str, Any]] = {}


def measure_peak_tflops(
    device: torch.device, dtype: torch.dtype, size: int, warmup: int = 3, runs: int = 10
) -> dict[str, Any]:
    """Dense (size x size) @ (size x size)^T matmul rate in TFLOP/s through the model's own product
    (`pg_vla.model.linear.linear`, in inference mode): median over `runs` timed calls after `warmup` calls;
    on CUDA each timed call is 10 back-to-back matmuls between CUDA events. Measured once per (device,
    dtype, size) and process; float32 on CUDA follows the TF32 setting. `computed_in` says in which
    dtype the product runs (bf16 inference on a CPU without native bf16 runs in float32, as the model's)."""
    key = (str(device), str(dtype), size)
    if key in _PEAKS:
        return _PEAKS[key]
    cuda = device.type == "cuda"
    repeats = 10 if cuda else 1
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)

    def product() -> torch.Tensor:
        with torch.inference_mode():
            return linear(a, b)

    for _ in range(warmup):
        product()
    synchronize(device)
    seconds = []
    for _ in range(runs):
        if cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
            for _ in range(repeats):
                product()
            end_event.record()
            synchronize(device)
            seconds.append(start_event.elapsed_time(end_event) / 1000.0 / repeats)
        else:
            start = time.perf_counter()
            product()
            seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    peak = {
        "dtype": str(dtype).removeprefix("torch."),
        "computed_in": str(computed_in(device, dtype)).removeprefix("torch."),
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


def add_roofline(entry: dict[str, Any], flops_per_call: int, peak: dict[str, Any] | None) -> None:
    """`roofline`: the compute-bound limit of one call at the measured matmul peak, and how close the call came.

    peak_gflops        the dense matmul peak at the entry's dtype (`peak_matmul.tflops`), GFLOP/s
    flops_per_call     analytic FLOPs of one call (pg_vla.model.vla.flops)
    limit_ms           flops_per_call / peak: the latency if every FLOP ran at the peak, ms
    achieved_fraction  limit_ms / median_ms (the same ratio as `mfu`)
    """
    if not entry.get("median_ms") or peak is None or not peak.get("tflops"):
        return
    peak_gflops = peak["tflops"] * 1e3
    limit_ms = flops_per_call / (peak_gflops * 1e9) * 1e3
    entry["roofline"] = {
        "peak_gflops": round(peak_gflops, 3),
        "flops_per_call": flops_per_call,
        "limit_ms": float(f"{limit_ms:.6g}"),
        "achieved_fraction": float(f"{limit_ms / entry['median_ms']:.6g}"),
    }
