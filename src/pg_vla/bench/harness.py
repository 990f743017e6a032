"""Timing harness: device synchronization and names, timed calls, latency statistics, the profiler.

Times are in seconds where a list of raw timings is passed around and in milliseconds (`*_ms`, rounded
to microseconds) in the entries; throughput is samples per second (batch / median latency).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

from pg_vla.utils.machine import cpu_model_name


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- device ---------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- failures -------------------------------------------------------------------------------------------
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


# ---- timing ---------------------------------------------------------------------------------------------
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


def elapsed_ms(fn: Callable[[], Any], device: torch.device) -> float:
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


# ---- profiler -------------------------------------------------------------------------------------------
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
