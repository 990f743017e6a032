"""Load PaliGemma weights from a local checkpoint folder into the VLM side of a PiZero model.

Accepted folders: `model.safetensors`, or shards listed in `model.safetensors.index.json`, with keys
in either layout:

    on disk (google/paligemma-3b-pt-224, transformers save_pretrained)   in memory (transformers state_dict)
    vision_tower.vision_model.*  (or vision_tower.*)                      model.vision_tower.(vision_model.)*
    multi_modal_projector.linear.*                                        model.multi_modal_projector.linear.*
    language_model.model.*                                                model.language_model.*

`lm_head.weight`, where present, is tied to the token embeddings and skipped. Tensors are read one
at a time (memory-mapped) and copied into the model's parameters, so the weights never exist twice
in memory. Every expected key must be present with the right shape; unknown keys are named.
The action expert keeps its own initialization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

KEY_PREFIXES = (  # (checkpoint prefix, pg-vla prefix)
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.", "vision_tower."),  # transformers 5.x SigLIP without the vision_model wrapper
    ("model.vision_tower.", "vision_tower."),
    ("multi_modal_projector.linear.", "multi_modal_projector."),
    ("model.multi_modal_projector.linear.", "multi_modal_projector."),
    ("language_model.model.", "joint.experts.vlm."),
    ("model.language_model.", "joint.experts.vlm."),
)
TIED_KEYS = ("lm_head.weight", "language_model.lm_head.weight")
VLM_PREFIXES = ("vision_tower.", "multi_modal_projector.", "joint.experts.vlm.")


class CheckpointError(ValueError):
    """A checkpoint folder or file that does not match the model."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # pg-vla parameter names
    skipped_tied: list[str] = field(default_factory=list)  # checkpoint keys
    missing: list[str] = field(default_factory=list)  # pg-vla parameter names
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys


def map_key(key: str) -> str | None:
    """Checkpoint key -> pg-vla parameter name (None if the key belongs to no known part)."""
    for ckpt_prefix, own_prefix in KEY_PREFIXES:
        if key.startswith(ckpt_prefix):
            return own_prefix + key[len(ckpt_prefix) :]
    return None


def safetensors_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder, sharded (index json) or single."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a safetensors index (no weight_map): {err}") from err
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} holds neither model.safetensors nor model.safetensors.index.json")


def load_paligemma_weights(model: nn.Module, folder: str | Path, strict: bool = True) -> LoadReport:
    """Copy the PaliGemma weights of `folder` into `model` (a PiZero). Raises CheckpointError when
    `strict` and keys are missing or unexpected; shape mismatches always raise."""
    params = dict(model.named_parameters())
    expected = {name for name in params if name.startswith(VLM_PREFIXES)}
    report = LoadReport()
    for file in safetensors_files(folder):
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as err:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"cannot read {file}: {err}") from err
        with handle:
            for key in handle.keys():
                if key in TIED_KEYS:
                    report.skipped_tied.append(key)
                    continue
                name = map_key(key)
                if name is None or name not in expected:
                    report.unexpected.append(key)
                    continue
                tensor = handle.get_tensor(key)
                target = params[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise CheckpointError(
                        f"{file.name}: {key} has shape {tuple(tensor.shape)}, the model's {name} "
                        f"expects {tuple(target.shape)}"
                    )
                with torch.no_grad():
                    target.copy_(tensor)
                report.loaded.append(name)
    report.missing = sorted(expected - set(report.loaded))
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"PaliGemma checkpoint {folder} does not match the model: "
            f"missing {_names(report.missing)}; unexpected {_names(report.unexpected)}"
        )
    return report


def _names(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return f"{len(names)} keys: {shown}" + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
