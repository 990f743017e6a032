"""Typed training configuration, built from the Hydra config tree (config/train/*.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pg_vla.training.averaging import AveragingConfig
from pg_vla.training.lora import LoraSettings
from pg_vla.training.optim import OptimizerConfig
from pg_vla.training.schedules import ScheduleConfig
from pg_vla.utils.configs import dataclass_from_dict


PRECISIONS = ("fp32", "bf16", "bf16_pure")
DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "pg-vla"
    entity: str | None = None
    run_name: str | None = None  # default: the log_dir's name
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb.mode must be online, offline or disabled, got {self.mode!r}")
        self.tags = tuple(self.tags)


@dataclass
class ValidationConfig:
    every: int | None = None  # optimizer steps between validations (and after the last step); None: never
    split: str = "val"
    batches: int = 4  # per rank
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS  # in normalized action units
    at_start: bool = False  # also validate the starting weights (logged as step 0): a fine-tuning run's baseline

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"validation.every must be >= 1 or null, got {self.every}")
        if self.batches < 1:
            raise ValueError(f"validation.batches must be >= 1, got {self.batches}")
        self.thresholds = tuple(float(t) for t in self.thresholds)


@dataclass
class LoggingConfig:
    tensorboard: bool = False  # rank 0 also writes log.jsonl's scalars to log_dir/tensorboard (event files)

    def __post_init__(self) -> None:
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"logging.tensorboard must be true or false, got {self.tensorboard!r}")


@dataclass
class TrainConfig:
    pretrained_model_path: str  # PaliGemma checkpoint folder (weights, tokenizer, config.json)
    data: dict[str, Any]  # RLDSConfig fields except batch_size (per_device_batch_size sets it)
    log_dir: str
    tokenizer_path: str | None = None  # PaliGemma tokenizer folder (tokenizer.json / tokenizer.model), for a
    #                                    pretrained_model_path without one (pi0 weights); None: the tokenizer there
    n_updates: int = 1000
    seed: int = 0
    global_batch_size: int = 1024
    per_device_batch_size: int = 16
    model: dict[str, Any] = field(default_factory=dict)  # PiZeroConfig fields beyond the PaliGemma dimensions
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", warmup_steps=0))
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    precision: str = "fp32"  # "bf16": autocast (fp32 weights); "bf16_pure": bf16 weights and optimizer state
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward
    distributed: str = "ddp"  # "fsdp": shard parameters, gradients and optimizer state across ranks
    data_stream: str = "sharded"  # "replicated": every rank reads the whole stream and keeps its share, so a
    #                               step sees the same samples whatever the world size (reproducibility runs)
    train_vlm: bool | None = None  # shortcut for optimizer.train_vlm
    lora: bool = False  # peft LoRA adapters on the VLM (and vision tower) linears; action expert trains fully
    lora_r: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_vision: bool = True
    quantize: bool = False  # QLoRA: 4-bit nf4 base weights (needs lora=true)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # logging.tensorboard
    resume: str | bool = "auto"  # auto: continue from the newest checkpoint in log_dir/checkpoints if any
    resume_checkpoint_path: str | None = None
    log_every: int = 10
    save_every: int = 1000
    keep_last_n: int | None = 3
    max_nonfinite_steps: int = 3  # a step whose loss or gradient norm is NaN/inf is skipped; this many in a row stop
    device: str = "auto"  # auto: cuda when available

    def __post_init__(self) -> None:
        for name, cls in (
            ("optimizer", OptimizerConfig),
            ("schedule", ScheduleConfig),
            ("averaging", AveragingConfig),
            ("validation", ValidationConfig),
            ("wandb", WandbConfig),
            ("logging", LoggingConfig),
        ):
            value = getattr(self, name)
            if not isinstance(value, cls):
                setattr(self, name, cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(value).items()}))
        if not self.pretrained_model_path:
            raise ValueError(
                "pretrained_model_path is not set: point it at a local PaliGemma checkpoint folder "
                "(or set TRANSFORMERS_CACHE / the config's default)"
            )
        if not os.path.isdir(self.pretrained_model_path):
            raise FileNotFoundError(f"pretrained_model_path {self.pretrained_model_path} does not exist")
        if self.tokenizer_path:  # "" as null
            from pg_vla.model.paligemma.processing import TOKENIZER_FILES

            if not os.path.isdir(self.tokenizer_path):
                raise FileNotFoundError(f"tokenizer_path {self.tokenizer_path} does not exist")
            if not any(os.path.isfile(os.path.join(self.tokenizer_path, name)) for name in TOKENIZER_FILES):
                raise FileNotFoundError(
                    f"tokenizer_path {self.tokenizer_path} holds no tokenizer (expected one of "
                    f"{TOKENIZER_FILES}, e.g. a google/paligemma-3b-pt-224 folder)"
                )
        if not self.log_dir:
            raise ValueError("log_dir is not set (set VLA_LOG_DIR or pass log_dir=...)")
        from pg_vla.data.sources import check_paths

        check_paths(self.data)
        if self.train_vlm is not None:
            self.optimizer.train_vlm = bool(self.train_vlm)
        if self.quantize and not self.lora:
            raise ValueError("quantize=true (QLoRA) needs lora=true")
        if self.lora and not self.optimizer.train_vlm:
            raise ValueError("lora=true trains VLM adapters: it cannot be combined with train_vlm=false")
        if self.lora:
            self.lora_settings()  # validates r, alpha, dropout
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be ddp or fsdp, got {self.distributed!r}")
        if self.distributed == "fsdp" and (self.lora or self.averaging.kind != "none"):
            raise ValueError(
                "distributed=fsdp supports full fine-tuning without weight averaging; use ddp for "
                "lora/quantize or averaging"
            )
        if self.distributed == "fsdp" and self.precision == "bf16_pure":
            raise ValueError(
                "precision=bf16_pure is not supported with distributed=fsdp: the fp32 master weights "
                "that keep small updates from rounding away do not cover FSDP's sharded parameters; "
                "use precision=bf16 (autocast over fp32 weights) with fsdp"
            )
        if self.data_stream not in ("sharded", "replicated"):
            raise ValueError(f"data_stream must be sharded or replicated, got {self.data_stream!r}")
        if "batch_size" in self.data:
            raise ValueError("set per_device_batch_size instead of data.batch_size")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in (
            "n_updates",
            "global_batch_size",
            "per_device_batch_size",
            "log_every",
            "save_every",
            "max_nonfinite_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            vision=self.lora_vision,
            quantize=self.quantize,
        )

    def gradient_accumulation(self, world_size: int) -> int:
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by per_device_batch_size "
                f"{self.per_device_batch_size} x world size {world_size}"
            )
        return self.global_batch_size // per_step

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, data, "training")
