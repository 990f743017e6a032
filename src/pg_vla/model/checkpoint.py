"""pg-vla model checkpoints: one safetensors file holding the weights and the model config.

The config travels in the safetensors metadata (key `pg_vla_config`, JSON), so a checkpoint file is
enough to rebuild the model. Writes are atomic: the file is written next to its destination and
renamed over it, so an interrupted save never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pg_vla.model.linear import aligned
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero

FORMAT = "pg-vla-model-1"


def save_model(model: PiZero, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `model`'s weights and config to `path` (a .safetensors file), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    meta = {"format": FORMAT, "pg_vla_config": model.config.to_json(), **(metadata or {})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint (corrupt or truncated?): {err}"
        ) from err
    if meta.get("format") != FORMAT or "pg_vla_config" not in meta:
        raise CheckpointError(f"{path} is not a pg-vla model checkpoint (metadata format {meta.get('format')!r})")
    return meta


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> PiZero:
    """Rebuild the model from a checkpoint written by `save_model`; every tensor must match.

    Built on the meta device and filled tensor by tensor in `dtype`; `config_overrides` may change
    what the weights do not fix (a contradicting one fails the shape check, naming the tensor)."""
    path = Path(path)
    meta = read_metadata(path)
    config = PiZeroConfig.from_dict(json.loads(meta["pg_vla_config"]))
    if config_overrides:
        config = config.with_overrides(**config_overrides)
    with torch.device("meta"):
        model = PiZero(config)
    state = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                state[key] = aligned(tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)
    except Exception as err:
        raise CheckpointError(f"cannot read tensors of {path}: {err}") from err
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:20]}, unexpected {unexpected[:20]}")
    for key, tensor in state.items():
        if tensor.shape != model.state_dict()[key].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(model.state_dict()[key].shape)}"
            )
    model.load_state_dict(state, assign=True)
    return model.eval()
