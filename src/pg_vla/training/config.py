"""Typed training configuration, built from the Hydra config tree (config/train/*.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from pg_vla.training.averaging import AveragingConfig
from pg_vla.training.optim import OptimizerConfig
from pg_vla.training.schedules import ScheduleConfig


@dataclass
class TrainConfig:
    pretrained_model_path: str  # PaliGemma checkpoint folder (weights, tokenizer, config.json)
    data: dict[str, Any]  # RLDSConfig fields except batch_size (per_device_batch_size sets it)
    log_dir: str
    n_updates: int = 1000
    seed: int = 0
    global_batch_size: int = 1024
    per_device_batch_size: int = 16
    model: dict[str, Any] = field(default_factory=dict)  # PiZeroConfig fields beyond the PaliGemma dimensions
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", warmup_steps=0))
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    precision: str = "fp32"  # or "bf16" (autocast on CUDA and CPU)
    gradient_checkpointing: bool = False
    resume: str | bool = "auto"  # auto: continue from the newest checkpoint in log_dir/checkpoints if any
    resume_checkpoint_path: str | None = None
    log_every: int = 10
    save_every: int = 1000
    keep_last_n: int | None = 3
    device: str = "auto"  # auto: cuda when available

    def __post_init__(self) -> None:
        for name, cls in (("optimizer", OptimizerConfig), ("schedule", ScheduleConfig), ("averaging", AveragingConfig)):
            value = getattr(self, name)
            if not isinstance(value, cls):
                setattr(self, name, cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(value).items()}))
        if not self.pretrained_model_path:
            raise ValueError("pretrained_model_path is not set: point it at a local PaliGemma checkpoint folder "
                             "(or set TRANSFORMERS_CACHE / the config's default)")
        if not os.path.isdir(self.pretrained_model_path):
            raise FileNotFoundError(f"pretrained_model_path {self.pretrained_model_path} does not exist")
        if not self.log_dir:
            raise ValueError("log_dir is not set (set VLA_LOG_DIR or pass log_dir=...)")
        if "batch_size" in self.data:
            raise ValueError("set per_device_batch_size instead of data.batch_size")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("n_updates", "global_batch_size", "per_device_batch_size", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def gradient_accumulation(self, world_size: int) -> int:
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by per_device_batch_size "
                             f"{self.per_device_batch_size} x world size {world_size}")
        return self.global_batch_size // per_step

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"_target_"})
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})
