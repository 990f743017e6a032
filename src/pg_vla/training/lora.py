"""LoRA and QLoRA fine-tuning of pi0's VLM side with peft (and bitsandbytes 4-bit nf4 base weights).

    lora=true          low-rank adapters (peft) on every linear layer of the Gemma VLM expert and, with
                       lora_vision (default), of the SigLIP tower; those base weights are frozen
    quantize=true      QLoRA: the adapted base linears are stored as bitsandbytes 4-bit nf4 first

The action expert (and the proprio/action encoders and decoder) always trains in full. Adapters are
injected in place (`peft.inject_adapter_in_model`), so parameter names keep their PiZero spelling with
peft's `.base_layer.` / `.lora_A.default.` parts inside.

For inference and for `model.safetensors`, `merged_state_dict` folds every adapter into its base weight
(W + scaling * B @ A, with 4-bit weights de-quantized first) and returns a plain PiZero state dict: a
LoRA- or QLoRA-trained checkpoint loads like any other. Resuming keeps only the trainable tensors
(`trainable_state_dict`); the frozen base comes again from the pretrained checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pg_vla.utils.imports import import_bitsandbytes

VLM_LAYER_PREFIX = "joint.experts.vlm.layers."
VISION_LAYER_PREFIX = "vision_tower.encoder.layers."
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    vision: bool = True  # adapt (and, with quantize, quantize) the SigLIP tower's linears too
    quantize: bool = False  # QLoRA: 4-bit nf4 base weights

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.dropout}")


def target_module_names(model: nn.Module, vision: bool = True) -> list[str]:
    """Names of the linear layers that get adapters: the VLM expert's (and the vision tower's)."""
    prefixes = (VLM_LAYER_PREFIX, VISION_LAYER_PREFIX) if vision else (VLM_LAYER_PREFIX,)
    return [
        name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name.startswith(prefixes)
    ]


def quantize_linears_4bit(model: nn.Module, names: list[str], compute_dtype: torch.dtype = torch.float32) -> None:
    """Replace each named nn.Linear by a frozen bitsandbytes Linear4bit (nf4) holding its weights."""
    bnb = import_bitsandbytes()
    modules = dict(model.named_modules())
    for name in names:
        linear = modules[name]
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
        device = linear.weight.device
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(linear.weight.data.float().cpu(), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, quantized.to(device))


def apply_lora(model: nn.Module, settings: LoraSettings, compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Inject adapters (after 4-bit quantization with `settings.quantize`); returns the adapted module names.

    Afterwards only adapter weights and the action-expert side require gradients (pi0's always-frozen
    parameters are left to `pg_vla.training.optim.freeze_parameters`).
    """
    from peft import LoraConfig, inject_adapter_in_model

    from pg_vla.training.optim import ACTION_EXPERT_PREFIXES

    names = target_module_names(model, settings.vision)
    if not names:
        raise ValueError("the model has no VLM linear layers to adapt")
    if settings.quantize:
        quantize_linears_4bit(model, names, compute_dtype)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=names, bias="none"
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)  # freezes everything but the adapters
    for name, p in model.named_parameters():
        if name.startswith(ACTION_EXPERT_PREFIXES):
            p.requires_grad_(True)
    return names


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def _base_weight(base: nn.Module) -> torch.Tensor:
    """A base linear's weight in floating point (de-quantized if it is 4-bit)."""
    weight = base.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        bnb = import_bitsandbytes()
        return bnb.functional.dequantize_4bit(weight.data, quant_state)
    return weight.data


def merged_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A plain PiZero state dict with every adapter folded into its base weight.

    `state` (default: model.state_dict()) supplies the adapter and unadapted tensors, e.g. EMA-averaged
    ones; 4-bit base weights are de-quantized from the model. Without adapters this is `state` itself.
    """
    state = dict(model.state_dict() if state is None else state)
    layers = _lora_layers(model)
    if not layers:
        return state
    out: dict[str, torch.Tensor] = {}
    adapted = tuple(f"{name}." for name in layers)
    for key, tensor in state.items():
        if not key.startswith(adapted):
            out[key] = tensor
    for name, layer in layers.items():
        base = layer.get_base_layer()
        a = state[f"{name}.lora_A.{ADAPTER_NAME}.weight"].float()  # (r, in)
        b = state[f"{name}.lora_B.{ADAPTER_NAME}.weight"].float()  # (out, r)
        quantized = getattr(base.weight, "quant_state", None) is not None
        weight = _base_weight(base) if quantized else state[f"{name}.base_layer.weight"]
        merged = weight.float() + layer.scaling[ADAPTER_NAME] * (b @ a)
        out[f"{name}.weight"] = merged.to(state[f"{name}.lora_A.{ADAPTER_NAME}.weight"].dtype)
        if base.bias is not None:
            out[f"{name}.bias"] = state.get(f"{name}.base_layer.bias", base.bias.data)
    return out


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes (adapters, action expert): what resuming a LoRA run needs."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
