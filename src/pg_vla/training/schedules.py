"""Learning-rate schedules as multiplicative factors of each param group's peak lr.

`lr_factor(step, cfg)` is a pure function of the 0-based optimizer step (the number of `step()`
calls made before it):

    warmup   step < warmup_steps:  factor = (step + 1) / warmup_steps
             (1 / warmup_steps at step 0, exactly 1.0 at step warmup_steps - 1; no warmup when 0)
    then, with s = step - warmup_steps and hc(x) = 0.5 * (1 + cos(pi * x)):
    constant         1.0
    cosine           m + (1 - m) * hc(min(s / (total_steps - warmup_steps), 1))
                     (ends at m = min_lr_ratio at step total_steps and stays there)
    cosine_restarts  cycle i (0-based) lasts cycle_steps * cycle_mult**i steps (cycle
                     boundaries fall between steps when that length is fractional) and peaks at
                     p_i = restart_decay**i:
                     m + max(p_i - m, 0) * hc(position in cycle / cycle length)
                     (cycles repeat forever; total_steps is not used)

`make_scheduler` wraps this in a LambdaLR, so each param group keeps its own peak (base) lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

ScheduleKind = Literal["constant", "cosine", "cosine_restarts"]


@dataclass
class ScheduleConfig:
    kind: ScheduleKind = "cosine"
    warmup_steps: int = 200
    total_steps: int | None = None  # cosine: the step at which the lr reaches its floor
    min_lr_ratio: float = 0.0  # floor, as a fraction of the peak lr (cosine kinds)
    cycle_steps: int | None = None  # cosine_restarts: length of the first cycle
    cycle_mult: float = 1.0  # cosine_restarts: each cycle is this many times longer than the one before
    restart_decay: float = 1.0  # cosine_restarts: peak multiplier per restart

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "cosine", "cosine_restarts"):
            raise ValueError(f"schedule kind must be 'constant', 'cosine' or 'cosine_restarts', got {self.kind!r}")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.kind == "cosine":
            if not _is_int(self.total_steps) or self.total_steps <= self.warmup_steps:
                raise ValueError(
                    f"cosine schedule needs total_steps (int) > warmup_steps ({self.warmup_steps}), "
                    f"got {self.total_steps!r}"
                )
        if self.total_steps is not None and (not _is_int(self.total_steps) or self.total_steps <= 0):
            raise ValueError(f"total_steps must be None or an int > 0, got {self.total_steps!r}")
        if self.kind == "cosine_restarts":
            if not _is_int(self.cycle_steps) or self.cycle_steps <= 0:
                raise ValueError(f"cosine_restarts schedule needs cycle_steps (int) > 0, got {self.cycle_steps!r}")
        if not (
            isinstance(self.cycle_mult, (int, float)) and math.isfinite(self.cycle_mult) and self.cycle_mult >= 1.0
        ):
            raise ValueError(f"cycle_mult must be a finite number >= 1, got {self.cycle_mult!r}")
        if not (isinstance(self.restart_decay, (int, float)) and 0.0 < self.restart_decay <= 1.0):
            raise ValueError(f"restart_decay must be in (0, 1], got {self.restart_decay!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _half_cosine(x: float) -> float:
    """1 at x = 0 down to 0 at x = 1."""
    return 0.5 * (1.0 + math.cos(math.pi * x))


def _restart_cycle(s: int, cycle_steps: int, cycle_mult: float) -> tuple[int, float]:
    """Steps after warmup -> (cycle index, fraction of that cycle done, in [0, 1))."""
    if cycle_mult == 1.0:
        index, into = divmod(s, cycle_steps)
        return index, into / cycle_steps
    index, start, length = 0, 0.0, float(cycle_steps)
    while s >= start + length:  # cycles grow geometrically: a few dozen iterations at most in practice
        start += length
        length *= cycle_mult
        index += 1
    return index, (s - start) / length


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr at 0-based optimizer step `step` (formulas in the module docstring)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    s = step - cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "cosine":
        progress = min(s / (cfg.total_steps - cfg.warmup_steps), 1.0)
        return floor + (1.0 - floor) * _half_cosine(progress)
    index, fraction = _restart_cycle(s, cfg.cycle_steps, cfg.cycle_mult)
    peak = cfg.restart_decay**index
    return floor + max(peak - floor, 0.0) * _half_cosine(fraction)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `lr_factor` to every param group's own base lr.

    Its state_dict holds only plain values (step count, base lrs), so it saves and loads with
    `torch.load(weights_only=True)`; rebuild with the same `cfg` and load it to resume.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg=cfg))
