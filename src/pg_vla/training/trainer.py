"""The training loop: pi0 flow matching on RLDS data, one process per device (torchrun for several).

    uv run scripts/run.py --config-name=quickstart                       # CPU, generated data, tiny model
    uv run torchrun --nproc_per_node=8 scripts/run.py --config-name=bridge

Per optimizer step every rank runs `gradient_accumulation` micro-batches of `per_device_batch_size`
(gradients are all-reduced only on the last one), so a step sees `global_batch_size` samples. Rank 0
alone logs and writes checkpoints. Data comes from `pg_vla.data.dataloader` (tensorflow stays in a
spawned worker process).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pg_vla.data.rlds.dataset_configs import get_dataset_config, get_mix
from pg_vla.model.paligemma.processing import VLAProcessor
from pg_vla.model.vla.pizero import PiZero
from pg_vla.training.averaging import make_weight_average
from pg_vla.training.checkpoint import load_training_state, resolve_resume, save_training_checkpoint
from pg_vla.training.config import TrainConfig
from pg_vla.training.optim import clip_gradients, make_optimizer
from pg_vla.training.schedules import make_scheduler


def train(cfg: Any) -> dict[str, Any]:
    """Hydra `_target_` entry: a DictConfig (or dict) of the training run -> final metrics."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return Trainer(TrainConfig.from_dict(data)).run()


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.accumulation = cfg.gradient_accumulation(self.world_size)
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        self.log_dir = Path(cfg.log_dir)
        self.ckpt_dir = self.log_dir / "checkpoints"

    # ---- set-up ----------------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)

    def _build(self) -> None:
        cfg = self.cfg
        mix = get_mix(cfg.data.get("mix", "bridge"))
        configs = [get_dataset_config(name) for name in mix]
        roles = tuple(cfg.data.get("camera_roles", ("primary",)))
        model_overrides = {"proprio_dim": max(c.proprio_dim for c in configs),
                           "action_dim": max(c.action_dim for c in configs),
                           "num_cameras": len(roles), **cfg.model}
        torch.manual_seed(cfg.seed)  # same initial action expert on every rank
        self.model = PiZero.from_paligemma(cfg.pretrained_model_path, **model_overrides).to(self.device)
        model_cfg = self.model.config
        if cfg.gradient_checkpointing:
            self.model.set_gradient_checkpointing(True)
        self.processor = VLAProcessor.from_pretrained(cfg.pretrained_model_path,
                                                      max_text_tokens=model_cfg.max_text_tokens,
                                                      image_size=model_cfg.vision.image_size,
                                                      max_cameras=model_cfg.num_cameras)
        self.optimizer = make_optimizer(self.model, cfg.optimizer)  # also freezes what training must not touch
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule)
        self.averaging = make_weight_average(cfg.averaging, self.model)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.world_size > 1 else None)
        from pg_vla.data.dataloader import rlds_config

        self.rlds = rlds_config(**{**cfg.data, "batch_size": cfg.per_device_batch_size,
                                   "image_size": model_cfg.vision.image_size, "cond_steps": model_cfg.cond_steps,
                                   "horizon_steps": model_cfg.horizon_steps, "seed": cfg.seed})

    def _resume(self) -> int:
        path = resolve_resume(self.cfg.resume_checkpoint_path, self.ckpt_dir, self.cfg.resume)
        if path is None:
            self.batches_consumed = 0
            return 0
        state = load_training_state(path, self.model, optimizer=self.optimizer, schedulers=[self.scheduler],
                                    averaging=self.averaging)
        if self.world_size > 1:  # the checkpoint holds rank 0's RNG: give the other ranks their own streams
            torch.manual_seed(self.cfg.seed + self.rank + 1_000_003 * int(state["step"]))
        self.batches_consumed = int((state["data_state"] or {}).get("batches_consumed", 0))
        self._log({"event": "resumed", "checkpoint": str(path), "step": state["step"]})
        return int(state["step"])

    # ---- loop ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._init_distributed()
        self._build()
        torch.manual_seed(self.cfg.seed + self.rank)  # each rank draws its own flow noise and times
        from pg_vla.data.dataloader import make_rlds_loader

        loader, self.statistics = make_rlds_loader(self.rlds, self.rank, self.world_size)
        batches = iter(loader)  # draws its worker seed from the torch RNG: restore the saved RNG after this
        start_step = self._resume()
        for _ in range(self.batches_consumed):  # the stream is seeded: skipping restores its position
            next(batches)
        progress = self._progress(start_step)
        losses: list[tuple[int, float]] = []
        tic = time.perf_counter()
        step = start_step
        for step in range(start_step + 1, self.cfg.n_updates + 1):
            loss, grad_norm = self._optimizer_step(batches, step)
            losses.append((step, loss))
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}")
            if step % self.cfg.log_every == 0 or step == self.cfg.n_updates:
                elapsed = time.perf_counter() - tic
                samples = (step - start_step) * self.cfg.global_batch_size
                self._log({"step": step, "loss": loss, "grad_norm": grad_norm,
                           "lr": self.scheduler.get_last_lr()[0], "samples_per_s": samples / max(elapsed, 1e-9)})
            if step % self.cfg.save_every == 0 or step == self.cfg.n_updates:
                self._save(step)
        if progress is not None:
            progress.close()
        if self.rank == 0:
            self._plot(losses)
        if self.world_size > 1:
            dist.destroy_process_group()
        return {"step": step, "loss": losses[-1][1] if losses else None}

    def _inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        text = self.processor.tokenize(batch["language"])
        return {"images": self.processor.preprocess_images(batch["images"]).to(self.device),
                "text_ids": text["input_ids"].to(self.device), "text_mask": text["attention_mask"].to(self.device),
                "proprio": batch["proprio"].to(self.device), "actions": batch["actions"].to(self.device),
                "action_mask": batch["action_mask"].to(self.device)}

    def _optimizer_step(self, batches, step: int) -> tuple[float, float]:
        model = self.ddp or self.model
        total = 0.0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        for micro in range(self.accumulation):
            inputs = self._inputs(next(batches))
            self.batches_consumed += 1
            last = micro == self.accumulation - 1
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:  # one no_sync() context (single use) spans forward and backward
                with autocast:
                    loss = model(**inputs) / self.accumulation
                loss.backward()
            total += loss.item()
        grad_norm = clip_gradients(self.model, self.cfg.optimizer.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.averaging is not None:
            self.averaging.update(self.model, step)
        if self.world_size > 1:  # report the mean loss over ranks
            mean = torch.tensor([total], device=self.device)
            dist.all_reduce(mean)
            total = mean.item() / self.world_size
        return total, float(grad_norm)

    # ---- outputs (rank 0) --------------------------------------------------------------------------
    def _save(self, step: int) -> None:
        if self.rank == 0:
            inference = self.averaging.averaged_state_dict(self.model) if self.averaging is not None else None
            save_training_checkpoint(self.ckpt_dir, step, self.model, optimizer=self.optimizer,
                                     schedulers=[self.scheduler], averaging=self.averaging,
                                     config=_plain(asdict(self.cfg)), statistics=self.statistics,
                                     tokenizer=self.processor, data_state={"batches_consumed": self.batches_consumed},
                                     inference_state_dict=inference, keep_last_n=self.cfg.keep_last_n)
        if self.world_size > 1:
            dist.barrier()

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

    def _plot(self, losses: list[tuple[int, float]]) -> None:
        if not losses:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, values = [s for s, _ in losses], [v for _, v in losses]
        window = max(1, min(50, len(values) // 10))  # per-step losses are noisy (random flow times)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values, alpha=0.35, label="per step")
        ax.plot(steps, smooth, label=f"mean of last {window}")
        ax.legend()
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching loss")
        ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(self.log_dir / "loss_curve.png", dpi=100)
        plt.close(fig)


def _plain(value: Any) -> Any:
    """Dataclasses / tuples -> JSON-friendly values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

