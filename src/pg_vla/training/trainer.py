"""The training loop: pi0 flow matching on RLDS data, one process per device (torchrun for several).

    uv run scripts/run.py --config-name=quickstart                       # CPU, generated data, tiny model
    uv run torchrun --nproc_per_node=8 scripts/run.py --config-name=bridge

Per optimizer step every rank runs `gradient_accumulation` micro-batches of `per_device_batch_size`
(gradients are all-reduced only on the last one), so a step sees `global_batch_size` samples. Rank 0
alone logs and writes checkpoints. Data comes from `pg_vla.data.dataloader` (tensorflow stays in a
spawned worker process).

Randomness: the flow-matching noise and times of a step are drawn for the whole global batch from a
generator seeded by (seed, step), and each rank takes the slice of its samples. With
`data_stream=replicated` (every rank reads the same stream and keeps its share) a step therefore sees
the same samples with the same noise at any world size, and resuming needs no per-rank RNG state.
Global sample i of a step sits on micro-batch i // (per_device x world) of rank (i // per_device) % world.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pg_vla.data.sources import dataset_dims, inference_record, make_loader, scene_state_dim
from pg_vla.data.stream_checkpoint import StreamCheckpoints, StreamRestoreError, prune_staged, staged_name
from pg_vla.model.paligemma.processing import TOKENIZER_FILES, VLAProcessor
from pg_vla.model.pretrained import detect_layout
from pg_vla.model.vla.flow_matching import sample_time
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.averaging import make_weight_average
from pg_vla.checkpoint_folder import DATA_STREAM_DIR, TOKENIZER_DIR
from pg_vla.training.checkpoint import load_training_state, resolve_resume, save_training_checkpoint
from pg_vla.training.config import TrainConfig
from pg_vla.training.distributed import (
    FullStateModel,
    FullStateOptimizer,
    all_reduce_sum,
    init_distributed,
    world,
    wrap_model,
)
from pg_vla.training.optim import clip_gradients, freeze_parameters, make_optimizer
from pg_vla.training.schedules import make_scheduler
from pg_vla.training.curves import plot_loss_curve
from pg_vla.training.validation import ValidationTotals, chunk_within_threshold


logger = logging.getLogger(__name__)
STAGING_DIR = ".data_stream"  # under the checkpoint folder: loader positions waiting for their checkpoint


class NonFiniteTrainingError(RuntimeError):
    """The loss or the gradients stayed NaN/inf for `max_nonfinite_steps` steps in a row: training stops."""


def train(cfg: Any) -> dict[str, Any]:
    """Hydra `_target_` entry: a DictConfig (or dict) of the training run -> final metrics."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return Trainer(TrainConfig.from_dict(data)).run()


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.local_rank, self.world_size = world()
        self.accumulation = cfg.gradient_accumulation(self.world_size)
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        self.log_dir = Path(cfg.log_dir)
        self.ckpt_dir = self.log_dir / "checkpoints"
        self.wandb_run = None
        self.tensorboard = None  # SummaryWriter on rank 0 with logging.tensorboard=true
        self._val_loader = None  # made at the first validation, kept until the run ends

    # ---- set-up ----------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        self.data_dims = proprio_dim, action_dim, roles = dataset_dims(cfg.data)
        torch.manual_seed(cfg.seed)  # same initial action expert on every rank
        model = self._load_pretrained(proprio_dim, action_dim, len(roles))
        if cfg.precision == "bf16_pure":
            model = model.to(torch.bfloat16)
        self.model = model.to(self.device)
        model_cfg = self.model.config
        if cfg.gradient_checkpointing:
            self.model.set_gradient_checkpointing(True)
        self.processor = VLAProcessor.from_pretrained(
            self.tokenizer_folder,
            max_text_tokens=model_cfg.max_text_tokens,
            image_size=model_cfg.vision.image_size,
            max_cameras=model_cfg.num_views,  # every camera at every history frame
        )
        if cfg.lora:
            from pg_vla.training.lora import apply_lora

            compute = torch.bfloat16 if cfg.precision != "fp32" else torch.float32
            apply_lora(self.model, cfg.lora_settings(), compute_dtype=compute)
        freeze_parameters(self.model, cfg.optimizer.train_vlm)
        self.train_module = wrap_model(
            self.model,
            cfg.distributed,
            self.device,  # DDP / FSDP / the model
            offload=cfg.optimizer.offload,
        )
        self.optimizer = make_optimizer(self.model, cfg.optimizer)  # after sharding: FSDP's parameters
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule)
        self.averaging = make_weight_average(cfg.averaging, self.model)
        self.forward = torch.compile(self.train_module) if cfg.compile else self.train_module
        self.data_options = {
            "batch_size": cfg.per_device_batch_size,
            "image_size": model_cfg.vision.image_size,
            "cond_steps": model_cfg.cond_steps,
            "horizon_steps": model_cfg.horizon_steps,
            "seed": cfg.seed,
            "scene_state": bool(model_cfg.scene_state_dim) and model_cfg.scene_state_weight > 0,
        }

    def _load_pretrained(self, proprio_dim: int, action_dim: int, num_cameras: int) -> PiZero:
        """The model `pretrained_model_path` holds (pg_vla.model.pretrained). A PaliGemma folder gets an
        action expert sized to the data; a pi0 or pg-vla folder keeps the state/action sizes of its
        weights, and the data is zero-padded up to them (`_inputs`), the padded dims masked out of the loss."""
        cfg = self.cfg
        layout, source = detect_layout(cfg.pretrained_model_path)
        overrides: dict[str, Any] = {"num_cameras": num_cameras}
        if layout == "paligemma":
            overrides.update(proprio_dim=proprio_dim, action_dim=action_dim)
        if float(cfg.model.get("scene_state_weight", 0.0)) > 0:  # the readout's size comes from the data
            overrides["scene_state_dim"] = scene_state_dim(cfg.data)
        model = PiZero.from_pretrained(source, verify=False, **{**overrides, **cfg.model})  # verified just above
        if model.config.proprio_dim < proprio_dim or model.config.action_dim < action_dim:
            raise ValueError(
                f"the data has {proprio_dim}-D state and {action_dim}-D actions, more than the "
                f"{model.config.proprio_dim} / {model.config.action_dim} dims of {source}"
            )
        default_tokenizer = source / TOKENIZER_DIR if layout == "pg-vla" else Path(cfg.pretrained_model_path)
        self.tokenizer_folder = Path(cfg.tokenizer_path) if cfg.tokenizer_path else default_tokenizer
        if not any((self.tokenizer_folder / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{self.tokenizer_folder} holds no tokenizer (pi0 folders usually have none): set "
                "tokenizer_path to a PaliGemma folder, e.g. google/paligemma-3b-pt-224"
            )
        return model

    def _resume(self) -> tuple[int, StreamCheckpoints]:
        """Restore the checkpoint to resume from (if any) -> its step and where the data stream goes on."""
        path = resolve_resume(self.cfg.resume_checkpoint_path, self.ckpt_dir, self.cfg.resume)
        self.batches_consumed, self.replay = 0, 0
        if path is None:
            return 0, self._stream_checkpoints(None)
        state = load_training_state(
            path,
            FullStateModel(self.model, loading=True),  # type: ignore[arg-type]
            optimizer=FullStateOptimizer(self.model, self.optimizer),  # type: ignore[arg-type]
            schedulers=[self.scheduler],
            averaging=self.averaging,
        )
        if self.world_size > 1:  # the checkpoint holds rank 0's RNG (only dropout reads it): one stream per rank
            torch.manual_seed(self.cfg.seed + self.rank + 1_000_003 * int(state["step"]))
        # The optimizer came back with the learning rates of the saved run's schedule; a resumed run may
        # schedule differently (e.g. a larger n_updates): apply this run's schedule at the restored step.
        from pg_vla.training.schedules import lr_factor

        factor = lr_factor(self.scheduler.last_epoch, self.cfg.schedule)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        data_state = state["data_state"] or {}
        self.batches_consumed = int(data_state.get("batches_consumed", 0))
        if self.rank == 0:  # the steps after the checkpoint are trained again: drop their old records
            _truncate_log(self.log_dir / "log.jsonl", int(state["step"]))
        stream = self._stream_checkpoints(self._saved_stream(path, data_state))
        how = "restored" if stream.restore else "replayed" if self.replay else "restarted"
        self._log({"event": "resumed", "checkpoint": str(path), "step": state["step"], "data_stream": how})
        return int(state["step"]), stream

    def _saved_stream(self, path: Path, data_state: dict) -> Path | None:
        """The checkpoint's stream position for this rank's loader, or None. Without one (older
        checkpoints) the consumed batches are replayed; a sharded stream saved at another world size
        cannot continue and restarts (seeded anew)."""
        replicated = self.cfg.data_stream == "replicated"
        folder = path / DATA_STREAM_DIR / f"rank_{0 if replicated else self.rank}"  # replicated: one stream
        saved_world = data_state.get("world_size", self.world_size)
        if not replicated and saved_world != self.world_size:
            self.data_seed = self.cfg.seed + 1_000_003 * self.batches_consumed
            if self.rank == 0:
                logger.warning(
                    "the checkpoint's data shards are of %d ranks, this run has %d: the data stream "
                    "restarts in a new shuffled order",
                    saved_world,
                    self.world_size,
                )
            return None
        if folder.is_dir():
            return folder
        self.replay = self.batches_consumed
        if self.rank == 0:
            logger.warning(
                "%s holds no data-stream position: replaying %d batches to restore it", path, self.batches_consumed
            )
        return None

    def _stream_checkpoints(self, restore: Path | None) -> StreamCheckpoints:
        """The loader writes its position at each save (every `save_every` steps and the last)."""
        per_step = self.accumulation * (self.world_size if self.cfg.data_stream == "replicated" else 1)
        return StreamCheckpoints(
            staging=str(self.ckpt_dir / STAGING_DIR),
            rank=self.rank,
            every=self.cfg.save_every * per_step,
            final=self.cfg.n_updates * per_step,
            restore=None if restore is None else str(restore),
            start=self.batches_consumed - self.replay,
        )  # a replayed stream starts at 0

    # ---- loop ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        init_distributed(self.device)
        self._build()
        torch.manual_seed(self.cfg.seed + self.rank)
        self.data_seed = self.cfg.seed
        start_step, stream = self._resume()
        replicated = self.cfg.data_stream == "replicated"
        options = {
            **self.data_options,
            "rank": 0 if replicated else self.rank,
            "world_size": 1 if replicated else self.world_size,
            "seed": self.data_seed,
        }
        with torch.random.fork_rng(devices=[]):  # the loader's worker seeds leave the training RNG as restored
            try:
                loader, self.statistics = make_loader(self.cfg.data, **options, checkpoints=stream)
            except StreamRestoreError as err:  # e.g. data.num_workers changed: the saved position does not fit
                logger.warning("%s; the data stream restarts in a new shuffled order", err)
                options["seed"] = self.cfg.seed + 1_000_003 * self.batches_consumed
                stream = replace(stream, restore=None)
                loader, self.statistics = make_loader(self.cfg.data, **options, checkpoints=stream)
            batches = iter(loader)
        for _ in range(self.replay):  # a checkpoint without a stream position: the seeded stream is replayed
            next(batches)
        self._start_wandb()
        self._start_tensorboard(start_step)
        progress = self._progress(start_step)
        losses: list[tuple[int, float]] = []
        tic = time.perf_counter()
        step = start_step
        last_val: dict[str, float] = {}
        if self.cfg.validation.every and self.cfg.validation.at_start and start_step == 0:
            self._log({"step": 0, **self.validate(0)})
        skipped = 0  # consecutive steps whose loss or gradients were not finite
        for step in range(start_step + 1, self.cfg.n_updates + 1):
            loss, grad_norm = self._optimizer_step(batches, step)
            record: dict[str, Any] = {}
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                skipped += 1
                self._log(
                    {
                        "step": step,
                        "event": "skipped_non_finite",
                        "loss": _finite_or_none(loss),
                        "grad_norm": _finite_or_none(grad_norm),
                        "consecutive": skipped,
                    }
                )
                if skipped >= self.cfg.max_nonfinite_steps:
                    last = self.ckpt_dir / "latest"
                    raise NonFiniteTrainingError(
                        f"loss or gradients non-finite (loss {loss}, grad norm {grad_norm}) at {skipped} steps in a "
                        f"row, {step - skipped + 1}..{step}: training stopped (max_nonfinite_steps="
                        f"{self.cfg.max_nonfinite_steps}); the weights were not updated by those steps, and the last "
                        f"checkpoint ({last.read_text().strip() if last.is_file() else 'none'}) is intact"
                    )
            else:
                skipped = 0
                losses.append((step, loss))
            if step % self.cfg.log_every == 0 or step == self.cfg.n_updates:
                elapsed = time.perf_counter() - tic
                samples = (step - start_step) * self.cfg.global_batch_size
                record = {
                    "step": step,
                    "loss": _finite_or_none(loss),
                    "grad_norm": _finite_or_none(grad_norm),
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": samples / max(elapsed, 1e-9),
                }
            every = self.cfg.validation.every
            if every and (step % every == 0 or step == self.cfg.n_updates):
                last_val = self.validate(step)
                record = {**record, "step": step, **last_val}
            if record:
                self._log(record)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{loss:.4f}", **({"val_loss": f"{last_val['val_loss']:.4f}"} if last_val else {})
                )
            if step % self.cfg.save_every == 0 or step == self.cfg.n_updates:
                self._save(step)
        if progress is not None:
            progress.close()
        self._val_loader = None  # its worker stops
        if self.rank == 0:
            self._plot(losses)
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.world_size > 1:
            dist.destroy_process_group()
        return {"step": step, "loss": losses[-1][1] if losses else None, **last_val}

    def _inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """A loader batch -> model inputs: images (B, C*N, 3, S, S) and image_mask (B, C*N) as the loader's views.
        State (B, C, P) and actions (B, H, A) are zero-padded to the model's dims (pi0 weights: 32); then
        `action_mask` (B, H, A_model) leaves the padded dims out of the loss. With the scene-state target the
        batch's `scene_state` (B, K) comes along."""
        text = self.processor.tokenize(batch["language"])
        images = self.processor.preprocess_images(batch["images"])  # (B, C*N, 3, S, S)
        if self.cfg.precision == "bf16_pure":
            images = images.to(torch.bfloat16)
        cfg = self.model.config
        proprio, actions, mask = batch["proprio"], batch["actions"], batch["action_mask"]  # mask (B, H)
        data_action_dim = actions.shape[-1]
        if data_action_dim < cfg.action_dim:
            dims = torch.arange(cfg.action_dim) < data_action_dim
            mask = mask[..., None] & dims  # (B, H, A_model)
        return {
            "images": images.to(self.device),
            "image_mask": torch.as_tensor(batch["image_mask"], dtype=torch.bool).to(self.device),
            "text_ids": text["input_ids"].to(self.device),
            "text_mask": text["attention_mask"].to(self.device),
            "proprio": _pad_last(proprio, cfg.proprio_dim).to(self.device),
            "actions": _pad_last(actions, cfg.action_dim).to(self.device),
            "action_mask": mask.to(self.device),
            **({"scene_state": batch["scene_state"].to(self.device)} if "scene_state" in batch else {}),
        }

    def _step_noise(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow noise (G, H, A) and times (G,) of every sample of the step's global batch."""
        cfg = self.model.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed * 1_000_003 + step)
            noise = torch.randn(self.cfg.global_batch_size, cfg.horizon_steps, cfg.action_dim)
            times = sample_time(
                self.cfg.global_batch_size,
                cfg.time_sampling,
                alpha=cfg.time_beta_alpha,
                beta=cfg.time_beta_beta,
                time_max=cfg.time_max,
            )
        return noise, times

    def _micro_batches(self, batches):
        """This rank's `accumulation` micro-batches of the step, each with its global sample offset."""
        per_device = self.cfg.per_device_batch_size
        for micro in range(self.accumulation):
            if self.cfg.data_stream == "replicated":  # every rank reads all ranks' batches, keeps its own
                for r in range(self.world_size):
                    batch = next(batches)
                    self.batches_consumed += 1
                    if r == self.rank:
                        mine = batch
            else:
                mine = next(batches)
                self.batches_consumed += 1
            yield micro, mine, (micro * self.world_size + self.rank) * per_device

    def _optimizer_step(self, batches, step: int) -> tuple[float, float]:
        total = 0.0
        noise, times = self._step_noise(step)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        ddp = self.train_module if self.train_module is not self.model and self.cfg.distributed == "ddp" else None
        for micro, batch, offset in self._micro_batches(batches):
            inputs = self._inputs(batch)
            b = inputs["actions"].shape[0]
            inputs["noise"] = noise[offset : offset + b].to(self.device)
            inputs["time"] = times[offset : offset + b].to(self.device)
            last = micro == self.accumulation - 1
            sync = contextlib.nullcontext() if ddp is None or last else ddp.no_sync()
            if self.cfg.distributed == "fsdp" and self.world_size > 1:
                self.model.set_requires_gradient_sync(last)  # FSDP's counterpart of no_sync
            with sync:  # one no_sync() context (single use) spans forward and backward
                with autocast:
                    loss = self.forward(**inputs) / self.accumulation
                loss.backward()
            total += loss.item()
        grad_norm = float(clip_gradients(self.model, self.cfg.optimizer.grad_clip_norm))  # global over ranks
        if self.world_size > 1:  # the mean loss over ranks (NaN on any rank makes it NaN: all ranks agree)
            mean = torch.tensor([total], device=self.device)
            dist.all_reduce(mean)
            total = mean.item() / self.world_size
        if math.isfinite(total) and math.isfinite(grad_norm):
            self.optimizer.step()
            if self.averaging is not None:
                self.averaging.update(self.model, step)
        # else: the step is skipped (weights, optimizer state and average untouched); the schedule moves on
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    # ---- validation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Flow-matching loss and chunk accuracy at thresholds on the first `validation.batches` batches
        of each rank's validation shard, with the averaged (EMA/SWA) weights when there are some."""
        cfg = self.cfg.validation
        if self._val_loader is None:  # kept for the run: its worker starts (imports tensorflow) once
            self._val_loader, _ = make_loader(
                self.cfg.data,
                **self.data_options,
                rank=self.rank,
                world_size=self.world_size,
                validation=True,
                val_split=cfg.split,
                train_statistics=self.statistics,
            )
        totals = ValidationTotals(cfg.thresholds)
        averaged = self.averaging.swapped_in(self.model) if self.averaging is not None else contextlib.nullcontext()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        self.model.eval()
        sharded = self.cfg.distributed == "fsdp" and self.world_size > 1
        if sharded:  # sampling calls submodules directly, past FSDP's root hooks: gather the weights first
            self.model.unshard()
        with averaged, autocast, torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 7919 * (self.rank + 1))  # the same noise at every validation
            for index, batch in enumerate(self._val_loader):  # each pass starts at the beginning
                if index >= cfg.batches:
                    break
                inputs = self._inputs(batch)
                actions, mask = inputs.pop("actions"), inputs.pop("action_mask")
                scene_state = inputs.pop("scene_state", None)  # val_loss stays the flow loss alone
                loss = self.model(**inputs, actions=actions, action_mask=mask)
                predicted = self.model.sample_actions(**inputs)
                if scene_state is not None:
                    totals.add_scene_state(self.model.predict_scene_state(**inputs), scene_state)
                dims = self.data_dims[1]  # the padded dims are not the data's
                steps = mask if mask.ndim == 2 else mask[..., 0]
                totals.add(
                    float(loss),
                    chunk_within_threshold(predicted[..., :dims], actions[..., :dims], steps, cfg.thresholds),
                )
        if sharded:
            self.model.reshard()
        self.model.train()
        packed = all_reduce_sum(totals.as_tensor(), self.device)
        return ValidationTotals.from_tensor(cfg.thresholds, packed).metrics()

    # ---- outputs (rank 0) --------------------------------------------------------------------------
    def _save(self, step: int) -> None:
        full = FullStateModel(self.model)
        optimizer = FullStateOptimizer(self.model, self.optimizer)
        if full.sharded:  # gathering the shards is a collective: every rank takes part
            weights, optimizer_state = full.state_dict(), optimizer.state_dict()
        if self.rank == 0:
            from pg_vla.training.lora import merged_state_dict, trainable_state_dict

            inference = self.averaging.averaged_state_dict(self.model) if self.averaging is not None else None
            training_weights = None
            if self.cfg.lora:  # publish merged adapters; resuming needs only the trainable tensors
                inference = merged_state_dict(self.model, inference)
                training_weights = trainable_state_dict(self.model)
            model: Any = self.model
            if full.sharded:
                model, optimizer = _Frozen(self.model.config, weights), _Frozen(None, optimizer_state)
            staged = self.ckpt_dir / STAGING_DIR / staged_name(self.batches_consumed)
            data_state = {
                "batches_consumed": self.batches_consumed,
                "world_size": self.world_size,
                "data_stream": self.cfg.data_stream,
            }
            save_training_checkpoint(
                self.ckpt_dir,
                step,
                model,
                optimizer=optimizer,  # type: ignore[arg-type]
                schedulers=[self.scheduler],
                averaging=self.averaging,
                config=_plain(asdict(self.cfg)),
                statistics=self.statistics,
                tokenizer=self.processor,
                data_state=data_state,
                data_stream=staged if staged.is_dir() else None,
                inference=inference_record(self.cfg.data, self.statistics, self.model.config.vision.image_size),
                inference_state_dict=inference,
                training_state_dict=training_weights,
                keep_last_n=self.cfg.keep_last_n,
            )
            prune_staged(self.ckpt_dir / STAGING_DIR, self.batches_consumed)
        if self.world_size > 1:
            dist.barrier()

    def _start_wandb(self) -> None:
        settings = self.cfg.wandb
        if self.rank != 0 or settings.mode == "disabled":
            return
        import wandb

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb.init(
            mode=settings.mode,
            project=settings.project,
            entity=settings.entity,
            name=settings.run_name or self.log_dir.name,
            tags=list(settings.tags),
            dir=str(self.log_dir),
            config=_plain(asdict(self.cfg)),
            resume="allow",
            id=_wandb_id(self.log_dir),
        )

    def _start_tensorboard(self, start_step: int) -> None:
        """Rank 0 writes the log.jsonl scalars (same names) to log_dir/tensorboard; a resumed run purges
        the old events after its checkpoint's step, as log.jsonl drops those records."""
        if self.rank != 0 or not self.cfg.logging.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "logging.tensorboard=true needs the tensorboard package (pip install tensorboard)"
            ) from err

        self.tensorboard = SummaryWriter(
            str(self.log_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )

    def _progress(self, start_step: int):
        if self.rank != 0:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.n_updates, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")
        if self.wandb_run is not None and "step" in record:
            self.wandb_run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
        if self.tensorboard is not None and "step" in record and "event" not in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, global_step=record["step"])
            self.tensorboard.flush()  # a run that stops with an error keeps what it logged

    def _plot(self, losses: list[tuple[int, float]]) -> None:
        if losses:  # training and validation loss, validation accuracy (pg_vla.training.curves)
            plot_loss_curve(losses, self.log_dir / "log.jsonl", self.log_dir / "loss_curve.png")


def _plain(value: Any) -> Any:
    """Dataclasses / tuples -> JSON-friendly values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Frozen:
    """A fixed state (gathered from FSDP shards) standing in for a model or optimizer when saving."""

    def __init__(self, config: Any, state: dict[str, Any]):
        self.config, self._state = config, state

    def state_dict(self) -> dict[str, Any]:
        return self._state


def _finite_or_none(value: float) -> float | None:
    """A metric for log.jsonl: NaN/inf would make the line invalid strict JSON."""
    return value if math.isfinite(value) else None


def _truncate_log(path: Path, step: int) -> None:
    """Keep the records of `path` (JSON lines) up to `step`, and those without a step; drop later steps
    and lines that do not parse (a record cut off by a crash). Rewritten atomically."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line + "\n")
    if not dropped:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _wandb_id(log_dir: Path) -> str:
    """One wandb run per log_dir, kept across resumes (stored in log_dir/wandb_run_id)."""
    path = log_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., D) -> (..., size), zeros after the first D."""
    return x if x.shape[-1] == size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))
