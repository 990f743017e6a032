"""Memory: what a device still has, the peak of a piece of work, and estimates of what a run needs.

Sizes are in bytes unless named otherwise (`*_mib`: MiB, `*_gib`: GiB). The estimates decide whether a
combination or mode is run at all: on CPU running out of memory is not an exception but the OOM killer.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch

from pg_vla.bench.harness import synchronize
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero
from pg_vla.utils.machine import current_rss_mib, peak_rss_mib

GIB = 1024**3
MIB = 1024**2


# ---- what the device has ----------------------------------------------------------------------------------
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


# ---- peak of a piece of work ------------------------------------------------------------------------------
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


# ---- estimates -----------------------------------------------------------------------------------------------
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
