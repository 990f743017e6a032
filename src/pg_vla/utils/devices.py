"""One rule for the `--device` / `device=` options: a torch device that exists on this machine."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or "auto" -> cuda when a GPU is visible, else cpu; anything else must name a usable device.

    Raises ValueError naming the device and what is missing (an unknown name, no CUDA device visible,
    an index beyond the visible devices), before a checkpoint is read."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto): {err}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: no CUDA device is visible on this machine "
                "(torch.cuda.is_available() is False); use cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif resolved.type != "cpu":
        backend = getattr(torch, resolved.type, None)  # torch.mps, torch.xpu, ...
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"device {device!r} is not available on this machine")
    return resolved
