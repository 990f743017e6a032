"""Process groups and model wrapping for torchrun: DDP (replicated weights) or FSDP (sharded weights).

    ddp   every rank holds the whole model; gradients are all-reduced after the last micro-batch.
    fsdp  parameters, gradients and optimizer state are sharded across ranks (torch's fully_shard, one
          unit per transformer layer of each expert and of the vision tower, plus the root); use it when
          the model with its optimizer state does not fit one device.

Checkpoints are always written as full (unsharded) state by rank 0, so a run saved with FSDP loads for
inference, or resumes under DDP, like any other. `FullStateModel` / `FullStateOptimizer` give the
checkpoint code the plain `state_dict()` / `load_state_dict()` it expects; with FSDP their calls are
collectives that every rank must make.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pg_vla.training.optim import LocalShardOptimizer


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment (0, 0, 1 without torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> None:
    """Join torchrun's process group: NCCL on CUDA, gloo on CPU. A no-op for a single process."""
    if world()[2] > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


T = TypeVar("T")
# How long the other ranks wait for rank 0 to compute what they then read (a pass over a large dataset can
# take hours); a rank that dies ends the job anyway, as torchrun stops the other workers.
RANK_ZERO_FIRST_TIMEOUT = timedelta(hours=24)


def rank_zero_first(fn: Callable[[], T]) -> T:
    """fn() on global rank 0 first, then on the other ranks: for work that caches its result on disk
    (normalization statistics), so that the others find the cache instead of repeating the work.

    Three rounds, each closed by a barrier: rank 0; the first rank (local rank 0) of every other node,
    which reads rank 0's file when the nodes share the folder and computes its own otherwise; the
    remaining ranks, which read their node's file. Every rank of the job must call it; without a
    process group it just calls fn(). An error in one round stops every rank: the failing ranks
    re-raise theirs, the others raise a RuntimeError naming them (rather than waiting or computing).
    The barriers run on a gloo group of their own, whose timeout (RANK_ZERO_FIRST_TIMEOUT) outlasts
    long computations (NCCL's default would give up after minutes).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    rank, local_rank = dist.get_rank(), world()[1]
    group = dist.new_group(backend="gloo", timeout=RANK_ZERO_FIRST_TIMEOUT)
    try:
        result: Any = None
        for turn in (rank == 0, rank != 0 and local_rank == 0, rank != 0 and local_rank != 0):
            error = None
            if turn:
                try:
                    result = fn()
                except Exception as err:  # noqa: BLE001 - handed to the other ranks, then re-raised
                    error = err
            errors: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}", group=group)
            if error is not None:
                raise error
            failed = {r: e for r, e in enumerate(errors) if e is not None}
            if failed:
                first = min(failed)
                raise RuntimeError(
                    f"rank {first} failed in work the other ranks wait for ({len(failed)} rank(s) "
                    f"failed): {failed[first]}"
                )
        return result
    finally:
        dist.destroy_process_group(group)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules FSDP shards one at a time: every transformer layer (vision tower and both experts)."""
    units = []
    for name, module in model.named_modules():
        parent, _, index = name.rpartition(".")
        if index.isdigit() and parent.endswith("layers"):
            units.append(module)
    return units


def wrap_model(model: nn.Module, mode: str, device: torch.device, offload: bool = False) -> nn.Module:
    """-> the module to run forward/backward through (DDP wrapper, the FSDP-sharded model itself, or model).

    FSDP with `offload`: FSDP's CPU offload policy keeps the sharded parameters, their gradients and so
    the optimizer state in CPU memory, and the optimizer steps there (each unit's shard is moved to the
    device for its forward and backward)."""
    if world()[2] == 1:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method

        policy = CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy()
        for unit in shard_units(model):
            fully_shard(unit, offload_policy=policy)
            for method in ("attention_inputs", "finish"):  # joint layers call these, not forward()
                if hasattr(unit, method):
                    register_fsdp_forward_method(unit, method)
        fully_shard(model, offload_policy=policy)
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class FullStateModel:
    """A model's full state for checkpoints (gathered from the shards under FSDP; rank 0 gets it all)."""

    def __init__(self, model: nn.Module, loading: bool = False):
        self.model = model
        self.config = getattr(model, "config", None)
        self.sharded = is_sharded(model)
        self.loading = loading  # state_dict() only describes names and full shapes (no gathering)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.sharded:
            return self.model.state_dict()
        if self.loading:
            return {k: torch.empty(v.shape, device="meta") for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> Any:
        if not self.sharded:
            return self.model.load_state_dict(state, strict=strict)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        return set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=strict))


class FullStateOptimizer:
    """An optimizer's full state for checkpoints (see `FullStateModel`)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.sharded = is_sharded(model)

    def state_dict(self) -> dict[str, Any]:
        if not self.sharded:
            return self.optimizer.state_dict()
        if isinstance(self.optimizer, LocalShardOptimizer):  # per-rank 8-bit state: every rank's, on rank 0
            rank, _, world_size = world()
            return self.optimizer.sharded_state_dict(rank, world_size)  # type: ignore[return-value]
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.sharded:
            self.optimizer.load_state_dict(state)
            return
        if isinstance(self.optimizer, LocalShardOptimizer):
            rank, _, world_size = world()
            self.optimizer.load_sharded_state_dict(state, rank, world_size)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum a float64 CPU tensor over ranks (returned on CPU); itself without a process group."""
    if not dist.is_initialized():
        return values
    buffer = values.to(device=device, dtype=torch.float64 if device.type != "mps" else torch.float32)
    dist.all_reduce(buffer)
    return buffer.cpu().double()
