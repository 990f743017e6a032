"""Optimizers for pi0: which parameters train, their groups, AdamW (32-bit or 8-bit), gradient clipping.

Parameters split into two parts by name:

    VLM            vision_tower.*, multi_modal_projector.*, joint.experts.vlm.*
    action expert  joint.experts.action.*, proprio_encoder.*, action_encoder.*, action_decoder.*,
                   scene_state_decoder.* (the scene-state readout, when the model has one)

Each part has its own learning rate and weight decay, and is split again into "decay" and "no_decay"
groups: biases, norm weights (every 1-D parameter) and embedding tables get no weight decay. Groups
are named "vlm_decay", "vlm_no_decay", "action_expert_decay", "action_expert_no_decay"; empty ones are
dropped.

Names may come wrapped by peft (`base_model.model.` prefixes, `.base_layer.` inside LoRA-wrapped
modules); they are compared in their plain PiZero form. LoRA adapter weights count toward the part
of the module they adapt (an adapter on a VLM projection is in the VLM groups).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pg_vla.utils.imports import import_bitsandbytes

OptimizerName = Literal["adamw", "adamw8bit"]

VLM_PREFIXES = ("vision_tower.", "multi_modal_projector.", "joint.experts.vlm.")
ACTION_EXPERT_PREFIXES = (
    "joint.experts.action.",
    "proprio_encoder.",
    "action_encoder.",
    "action_decoder.",
    "scene_state_decoder.",
)
_WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")  # peft, torch.compile, DDP


@dataclass
class OptimizerConfig:
    name: OptimizerName = "adamw"
    vlm_lr: float = 5e-5
    action_expert_lr: float = 5e-5
    vlm_weight_decay: float = 0.0
    action_expert_weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip_norm: float | None = 1.0  # None: measure the gradient norm, never clip
    train_vlm: bool = True  # False: the whole VLM side is frozen, only the action expert trains
    offload: bool = False  # optimizer state (and bf16_pure's fp32 masters) in CPU memory, the step run there

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer name must be 'adamw' or 'adamw8bit', got {self.name!r}")
        for field_name in ("vlm_lr", "action_expert_lr"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{field_name} must be a finite number > 0, got {value!r}")
        for field_name in ("vlm_weight_decay", "action_expert_weight_decay"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{field_name} must be a finite number >= 0, got {value!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if self.grad_clip_norm is not None and not (
            isinstance(self.grad_clip_norm, (int, float))
            and math.isfinite(self.grad_clip_norm)
            and self.grad_clip_norm > 0
        ):
            raise ValueError(f"grad_clip_norm must be None or a finite number > 0, got {self.grad_clip_norm!r}")
        for field_name in ("train_vlm", "offload"):
            if not isinstance(getattr(self, field_name), bool):
                raise ValueError(f"{field_name} must be a bool, got {getattr(self, field_name)!r}")


def canonical_name(name: str) -> str:
    """Parameter name as plain PiZero spells it: wrapper prefixes and peft's `.base_layer` removed."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name.replace(".base_layer.", ".")


def is_vlm_parameter(name: str) -> bool:
    return canonical_name(name).startswith(VLM_PREFIXES)


def _part(name: str) -> str:
    plain = canonical_name(name)
    if plain.startswith(VLM_PREFIXES):
        return "vlm"
    if plain.startswith(ACTION_EXPERT_PREFIXES):
        return "action_expert"
    raise ValueError(
        f"parameter {name!r} belongs to neither the VLM ({', '.join(VLM_PREFIXES)}) nor the action "
        f"expert ({', '.join(ACTION_EXPERT_PREFIXES)})"
    )


def _always_frozen(model: nn.Module) -> set[str]:
    """Names (model's own spelling) of the parameters pi0 never trains: `frozen_parameter_names()` and
    anything inside those modules (e.g. LoRA adapters wrapped around them)."""
    inner = model
    while not hasattr(inner, "frozen_parameter_names") and isinstance(getattr(inner, "module", None), nn.Module):
        inner = inner.module  # DistributedDataParallel does not forward attributes
    if not hasattr(inner, "frozen_parameter_names"):
        raise TypeError(f"{type(model).__name__} has no frozen_parameter_names(); expected a PiZero (maybe wrapped)")
    frozen = {canonical_name(n) for n in inner.frozen_parameter_names()}
    module_prefixes = tuple(n.rsplit(".", 1)[0] + "." for n in frozen)
    names = set()
    for name, _ in model.named_parameters():
        plain = canonical_name(name)
        if plain in frozen or plain.startswith(module_prefixes):
            names.add(name)
    return names


def freeze_parameters(model: nn.Module, train_vlm: bool) -> list[str]:
    """Turn off gradients for `model.frozen_parameter_names()` (and, with `train_vlm=False`, every VLM
    parameter). Parameters already frozen (e.g. by peft) stay frozen; nothing is unfrozen.

    Returns the names of all parameters frozen after the call, in `named_parameters()` order.
    """
    always = _always_frozen(model)
    frozen = []
    for name, p in model.named_parameters():
        if name in always or (not train_vlm and is_vlm_parameter(name)):
            p.requires_grad_(False)
        if not p.requires_grad:
            frozen.append(name)
    return frozen


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases, 1-D parameters (norm weights and the like) and embedding tables."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            names.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters())
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias"):
            names.add(name)
    return names


def parameter_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Optimizer param groups over the trainable parameters (see the module docstring).

    Leaves out parameters with `requires_grad=False`, the always-frozen ones, and with
    `cfg.train_vlm=False` every VLM parameter. Each group: {"name", "params", "lr", "weight_decay"}.
    """
    always = _always_frozen(model)
    no_decay = _no_decay_names(model)
    settings = {
        "vlm": (cfg.vlm_lr, cfg.vlm_weight_decay),
        "action_expert": (cfg.action_expert_lr, cfg.action_expert_weight_decay),
    }
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {
        (part, decay): [] for part in settings for decay in (True, False)
    }
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or name in always or id(p) in seen:
            continue
        part = _part(name)
        if part == "vlm" and not cfg.train_vlm:
            continue
        seen.add(id(p))
        buckets[(part, name not in no_decay)].append(p)
    groups = []
    for (part, decay), params in buckets.items():
        if params:
            lr, weight_decay = settings[part]
            groups.append(
                {
                    "name": f"{part}_{'decay' if decay else 'no_decay'}",
                    "params": params,
                    "lr": lr,
                    "weight_decay": weight_decay if decay else 0.0,
                }
            )
    if not groups:
        raise ValueError("the model has no trainable parameters to optimize")
    return groups


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Freeze what pi0 keeps frozen (`freeze_parameters(model, cfg.train_vlm)`), then AdamW over
    `parameter_groups(model, cfg)`: torch's (fused kernel when every parameter is on CUDA, foreach
    otherwise) or bitsandbytes' AdamW8bit (8-bit state for tensors of >= 4096 elements).

    When trainable parameters are bf16 (precision=bf16_pure), or with `cfg.offload`, the optimizer is
    wrapped in `MasterWeightOptimizer`: it updates copies of the parameters (fp32 for bf16 ones; in CPU
    memory when offloading) and writes them back. FSDP-sharded parameters are left to the inner
    optimizer (FSDP's own CPU offload policy puts them in CPU memory: `distributed.wrap_model`)."""
    freeze_parameters(model, cfg.train_vlm)
    groups = parameter_groups(model, cfg)
    if cfg.name == "adamw8bit":
        bnb = import_bitsandbytes()

        def adamw8bit(param_groups: list[dict]) -> torch.optim.Optimizer:
            return bnb.optim.AdamW8bit(
                param_groups, lr=cfg.action_expert_lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0
            )

        if any(not _is_plain(p) for g in groups for p in g["params"]):
            # FSDP: bitsandbytes' kernels take plain tensors; each rank steps its own shards (offload is
            # FSDP's CPU policy, and bf16_pure is refused with FSDP, so no master copies are needed)
            return LocalShardOptimizer(groups, adamw8bit)
        inner = adamw8bit(groups)
    else:
        params = [p for g in groups for p in g["params"]]
        on_cuda = all(p.device.type == "cuda" for p in params) and not cfg.offload
        kernel = {"fused": True} if on_cuda else {"foreach": True}
        inner = torch.optim.AdamW(
            groups, lr=cfg.action_expert_lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0, **kernel
        )
    wrapped = MasterWeightOptimizer(inner, offload=cfg.offload)
    return wrapped if wrapped.managed() else inner


MASTER_KEY = "master_weight"


def _is_plain(p: torch.Tensor) -> bool:
    """A parameter held as a plain tensor (FSDP's DTensor shards are left to the inner optimizer)."""
    return type(p.data) is torch.Tensor


def _needs_master(p: torch.Tensor) -> bool:
    """A bf16 plain parameter: its updates need an fp32 master."""
    return p.dtype == torch.bfloat16 and _is_plain(p)


class _WrappingOptimizer(torch.optim.Optimizer):
    """An optimizer around an inner one that owns the groups, state and defaults (no Optimizer.__init__),
    so schedulers and checkpoints see the inner optimizer's."""

    inner: torch.optim.Optimizer

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.inner.param_groups

    @property
    def state(self):  # type: ignore[override]
        return self.inner.state

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        return self.inner.defaults


class MasterWeightOptimizer(_WrappingOptimizer):
    """An optimizer that updates copies of the parameters instead of the parameters themselves:
    fp32 masters of bf16 parameters, and with `offload=True` copies in CPU memory of every parameter.

    Why masters: bf16 has 8 significant bits, so next to a weight of 1.0 the representable values are
    2^-7 (0.0078) apart; an AdamW update of lr 5e-5 is far below half that spacing and rounds away,
    step after step, so plain AdamW on bf16 weights barely trains. Of the remedies (fp32 master
    weights, Kahan-compensated updates, stochastic rounding) master weights were chosen because they
    wrap any inner optimizer unchanged, torch's AdamW and bitsandbytes' AdamW8bit alike (the update is
    computed by the inner optimizer's own kernel on the fp32 copy), are deterministic (stochastic
    rounding is right only on average), and leave the bf16 weight within one bf16 rounding of the
    exact fp32 trajectory. The cost is 4 bytes per trainable parameter for the master.

    Why offload: the AdamW moments (8 bytes per parameter, 2 with 8-bit) and the masters (4) of a
    3B-parameter model need more accelerator memory than its weights. With `offload=True` they live in
    CPU memory and the inner optimizer steps there: each step copies the gradients to the host and the
    updated weights back. On a CPU-only machine the same path runs (copies on the same device).

    `step()` swaps each managed parameter's data for its copy (the gradient moved and cast to match),
    runs the inner optimizer, and copies the updated copy back into the parameter's own storage (so
    DDP and anything else holding the parameter sees the same tensor). The masters of bf16 parameters
    are kept in the inner optimizer's per-parameter state under "master_weight", so `state_dict()` is
    the inner optimizer's, masters included (checkpoints store them like the moments); host copies of
    fp32 parameters equal the parameters and are not stored. `load_state_dict()` loads with the
    parameters swapped to their copies' device and dtype, so no state is cast to bf16 or sent to the
    accelerator on the way in. A state without masters (an older checkpoint) starts them from the
    weights. `param_groups` and `state` are the inner optimizer's, so schedulers drive its learning
    rates.
    """

    def __init__(self, inner: torch.optim.Optimizer, offload: bool = False):
        # No Optimizer.__init__: the inner optimizer owns the groups, state and defaults.
        self.inner, self.offload = inner, offload
        self._host: dict[torch.Tensor, torch.Tensor] = {}  # fp32 parameter -> its CPU copy (offload)
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    def managed(self) -> list[torch.Tensor]:
        """The parameters updated through copies: bf16 ones, and every plain one when offloading."""
        return [
            p
            for g in self.inner.param_groups
            for p in g["params"]
            if _needs_master(p) or (self.offload and _is_plain(p))
        ]

    def _copy_spec(self, p: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        return (
            torch.device("cpu") if self.offload else p.device,
            torch.float32 if p.dtype == torch.bfloat16 else p.dtype,
        )

    def master(self, p: torch.Tensor) -> torch.Tensor:
        """The copy the inner optimizer updates for `p`: the fp32 master of a bf16 parameter (its weight
        as fp32 before the first step), or the host copy of an offloaded fp32 one."""
        if _needs_master(p):
            stored = self.inner.state.get(p, {}).get(MASTER_KEY)
            if stored is not None:
                return stored
        elif p in self._host:
            return self._host[p]
        device, dtype = self._copy_spec(p)
        copy = p.detach().to(device, dtype, copy=True)
        if device.type == "cpu" and p.device.type == "cuda":
            copy = copy.pin_memory()  # faster copies both ways
        if not _needs_master(p):
            self._host[p] = copy
        return copy

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightOptimizer.step takes no closure")
        swapped = []
        for p in self.managed():
            if p.grad is None:
                continue
            grad, own, copy = p.grad, p.data, self.master(p)
            p.grad = None
            p.data = copy
            p.grad = grad.to(copy.device, copy.dtype)
            swapped.append((p, grad, own))
        try:
            self.inner.step()
        finally:
            for p, grad, own in swapped:
                copy = p.data
                if _needs_master(own):
                    self.inner.state[p][MASTER_KEY] = copy
                p.grad = None
                own.copy_(copy, non_blocking=copy.is_pinned())  # rounded to bf16 where the parameter is bf16
                p.data = own
                p.grad = grad
            if any(own.device.type == "cuda" for _, _, own in swapped):
                torch.cuda.current_stream().synchronize()  # the pinned copies are reused by the next step
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.inner.add_param_group(param_group)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        managed = self.managed()
        kept = [p.data for p in managed]
        for p in managed:
            device, dtype = self._copy_spec(p)
            p.data = p.data.to(device, dtype)  # state is cast to this: fp32, in CPU memory when offloading
        try:
            self.inner.load_state_dict(state_dict)
        finally:
            for p, data in zip(managed, kept):
                p.data = data
            self._host.clear()  # rebuilt from the (loaded) weights at the next step
            for p in managed:  # masters back to fp32 even where the inner optimizer cast them
                state = self.inner.state.get(p)
                if state is not None and MASTER_KEY in state:
                    state[MASTER_KEY] = state[MASTER_KEY].to(*self._copy_spec(p))

    def __repr__(self) -> str:
        return f"MasterWeightOptimizer({self.inner!r}, offload={self.offload})"


LOCAL_SHARDS_FORMAT = "local_shards"


class LocalShardOptimizer(_WrappingOptimizer):
    """Runs an optimizer that takes plain tensors (bitsandbytes' 8-bit AdamW) on this rank's shards of
    FSDP's DTensor parameters.

    Each sharded parameter gets a plain stand-in whose storage is the parameter's local shard; before a
    step the stand-ins' gradients are set to the local shards of the (already reduce-scattered)
    gradients, so the inner optimizer updates the shards in place and its state covers only this
    rank's part: 8-bit AdamW's 2 bytes per parameter are divided over the ranks like FSDP's own state.
    The 8-bit quantization blocks run over the local shard, so the state, and within the 8-bit
    rounding the update, differ from an unsharded run's.

    The state is this rank's alone: `sharded_state_dict()` / `load_sharded_state_dict()` (through
    `distributed.FullStateOptimizer`) gather every rank's state for a checkpoint and give each rank its
    own back, which needs the same world size; a different one is refused, naming both.
    """

    def __init__(self, groups: list[dict], make_inner):
        self.params: list[torch.Tensor] = []  # the model's (DTensor) parameters, in group order
        self.stand_ins: list[torch.Tensor] = []
        inner_groups = []
        for group in groups:
            stand_ins = []
            for p in group["params"]:
                stand_in = nn.Parameter(_local(p.detach()), requires_grad=True)
                self.params.append(p)
                self.stand_ins.append(stand_in)
                stand_ins.append(stand_in)
            inner_groups.append({**group, "params": stand_ins})
        self.inner = make_inner(inner_groups)
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("LocalShardOptimizer.step takes no closure")
        for p, stand_in in zip(self.params, self.stand_ins):
            stand_in.data = _local(p.detach())  # FSDP may re-create the shard's storage (e.g. after .to())
            shard = None if p.grad is None else _local(p.grad)
            stand_in.grad = shard if shard is not None and shard.numel() > 0 else None  # an empty shard: no step
        try:
            self.inner.step()
        finally:
            for stand_in in self.stand_ins:
                stand_in.grad = None
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("LocalShardOptimizer takes its parameter groups at construction")

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)

    def sharded_state_dict(self, rank: int, world_size: int) -> dict | None:
        """Every rank's state (CPU tensors) on rank 0, None elsewhere: a collective, all ranks call it."""
        import torch.distributed as dist

        local = _to_cpu(self.inner.state_dict())
        gathered: list | None = [None] * world_size if rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        if rank != 0:
            return None
        return {"format": LOCAL_SHARDS_FORMAT, "world_size": world_size, "ranks": gathered}

    def load_sharded_state_dict(self, state: dict, rank: int, world_size: int) -> None:
        if not isinstance(state, dict) or state.get("format") != LOCAL_SHARDS_FORMAT:
            raise ValueError(
                "the optimizer state is not per-rank 8-bit state (it was saved by another optimizer or "
                "without FSDP): resume with the optimizer and distributed mode it was saved with"
            )
        if state["world_size"] != world_size:
            raise ValueError(
                f"the 8-bit optimizer state was sharded over {state['world_size']} ranks and this run has "
                f"{world_size}: FSDP with adamw8bit resumes at the world size it was saved with"
            )
        self.inner.load_state_dict(state["ranks"][rank])

    def __repr__(self) -> str:
        return f"LocalShardOptimizer({self.inner!r})"


def _local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding this rank's part of `t` (itself for a plain tensor)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def clip_gradients(model_or_params: nn.Module | Iterable[torch.Tensor], max_norm: float | None) -> float:
    """Total L2 norm of the gradients before clipping; scales them down to `max_norm` when above it.

    `max_norm=None` only measures. A non-finite norm is returned as is (the caller may skip the step).
    Parameters without gradients are ignored; with none at all the norm is 0.0.
    """
    if isinstance(model_or_params, nn.Module):
        params = list(model_or_params.parameters())
    elif isinstance(model_or_params, torch.Tensor):
        params = [model_or_params]
    else:
        params = list(model_or_params)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor norm
