"""One loader for every folder a pi0 model starts from: `load_pretrained(folder, dtype=...)`.

    folder                                   recognised by                                  gives
    pg-vla checkpoint (step_N, a run's       model.safetensors with pg-vla metadata, or a   the trained model
      checkpoints/ folder or its log_dir)    checkpoints/ folder holding one
    transformers / LeRobot / openpi pi0      config.json in one of pi0's dialects           pi0 with its weights
                                             (pi0_format.py)
    PaliGemma                                config.json of model_type paligemma            VLM weights, a freshly
                                                                                            initialised action expert

pi0 folders are read as `pi0_format.py` describes: the model is built on the meta device and each
tensor is read once (memory-mapped safetensors, single or sharded) straight into the target dtype,
so no float32 copy of a bf16 model ever exists. Loading is strict: every parameter must come from
the folder with its shape, and keys of no known part are named with their file; nothing is
returned half-loaded. `config_overrides` may set what the weights do not fix (cameras, text
length, horizon, ...); a dimension the weights fix and the override contradicts is an error naming
the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pg_vla.model.linear import aligned
from pg_vla.model.paligemma.loading import CheckpointError, _names, safetensors_files
from pg_vla.model.pi0_format import (
    EMBEDDING_NAME,
    TIED_EMBEDDING_KEY,
    UNUSED,
    config_dialect,
    map_pi0_key,
    read_pi0_config,
    strip_lerobot_prefix,
)
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero

LAYOUTS = ("pg-vla", "pi0", "paligemma")
PG_VLA_MODEL_FILE = "model.safetensors"


def detect_layout(folder: str | Path, verify: bool = True) -> tuple[str, Path]:
    """-> (layout, the folder to read): one of LAYOUTS. Raises naming what the folder lacks.

    verify: a pg-vla checkpoint folder with a manifest.json is checked against it (every file's size
    and sha256) before anything reads it; a damaged one raises CheckpointError naming the file. A run
    folder resolves to its newest intact checkpoint. False skips the hashing (`--no_verify`)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; expected a model folder (pg-vla checkpoint, pi0 or PaliGemma)")
    config_file = folder / "config.json"
    model_file = folder / PG_VLA_MODEL_FILE
    if model_file.is_file() and _is_pg_vla_model_file(model_file):
        return "pg-vla", _verified(folder, verify)
    if config_file.is_file():
        try:
            raw = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_file} is not valid JSON: {err}") from err
        if isinstance(raw, dict) and config_dialect(raw) is not None:
            return "pi0", folder
        if isinstance(raw, dict) and raw.get("model_type") == "paligemma":
            return "paligemma", folder
    for candidate in (folder, folder / "checkpoints"):  # a run's log_dir or its checkpoints/ folder
        latest = _latest_checkpoint(candidate, verify)
        if latest is not None:
            return "pg-vla", latest
    raise CheckpointError(
        f"{folder} is not a model folder pg-vla knows: expected a pg-vla checkpoint ({PG_VLA_MODEL_FILE} with "
        "pg-vla metadata, or a run folder holding checkpoints/step_N), a pi0 folder (config.json with model_type "
        "pi0, LeRobot's type pi0, or openpi's action_horizon/paligemma_variant) or a PaliGemma folder (config.json "
        "with model_type paligemma)"
    )


def load_pretrained(
    folder: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    verify: bool = True,
    **config_overrides: Any,
) -> PiZero:
    """The model of any folder `detect_layout` knows (verified as it says), in `dtype` (default: float32
    for PaliGemma, the checkpoint's own dtype otherwise) on `device`."""
    layout, path = detect_layout(folder, verify)
    if layout == "paligemma":
        return PiZero.from_paligemma(path, dtype=dtype, **config_overrides).to(device)
    if layout == "pg-vla":
        from pg_vla.model.checkpoint import load_model

        return load_model(path / PG_VLA_MODEL_FILE, device=device, dtype=dtype, config_overrides=config_overrides)
    return load_pi0(path, dtype=dtype, device=device, **config_overrides)


def pi0_config(folder: str | Path, **config_overrides: Any) -> PiZeroConfig:
    """The model config of a pi0 folder (its config.json and tensor shapes) with `config_overrides` applied."""
    folder = Path(folder)
    shapes = {key: shape for key, (shape, _, _) in _tensor_index(folder).items()}
    config = read_pi0_config(folder / "config.json", shapes).config
    if not config_overrides:
        return config
    return config.with_overrides(**config_overrides)


def load_pi0(
    folder: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", **config_overrides: Any
) -> PiZero:
    """pi0 weights of an openpi / LeRobot / transformers folder (pi0_format.py) -> PiZero."""
    folder = Path(folder)
    index = _tensor_index(folder)
    config = pi0_config(folder, **config_overrides)
    with torch.device("meta"):
        model = PiZero(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    sources: dict[str, tuple[Path, str]] = {}  # parameter -> (file, key)
    unexpected, tied = [], None
    for key, (_, _, file) in index.items():
        name = map_pi0_key(key)
        if name == UNUSED:
            continue
        if name is None or name not in expected:
            unexpected.append(f"{file.name}: {key}")
        elif strip_lerobot_prefix(key) == TIED_EMBEDDING_KEY:
            tied = (file, key)
        elif name in sources:
            raise CheckpointError(
                f"{folder}: {key} ({file.name}) and {sources[name][1]} ({sources[name][0].name}) both hold {name}"
            )
        else:
            sources[name] = (file, key)
    if EMBEDDING_NAME not in sources and tied is not None:  # pi0 files tie the embeddings to the LM head
        sources[EMBEDDING_NAME] = tied
    missing = sorted(set(expected) - set(sources))
    if missing or unexpected:
        raise CheckpointError(
            f"pi0 folder {folder} does not match its config: missing {_names(missing)}; unexpected {_names(unexpected)}"
        )
    for name, (file, key) in sources.items():
        shape = index[key][0]
        if shape != expected[name]:
            raise CheckpointError(
                f"{file}: {key} has shape {shape}, the model built from {folder / 'config.json'} "
                f"(and overrides) expects {expected[name]} for {name}"
            )
    state = _read_tensors(sources, dtype, device)
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()


# ---- helpers -----------------------------------------------------------------------------------------
def _tensor_index(folder: Path) -> dict[str, tuple[tuple[int, ...], str, Path]]:
    """key -> (shape, dtype name, file) over a folder's safetensors files (headers only)."""
    index: dict[str, tuple[tuple[int, ...], str, Path]] = {}
    for file in safetensors_files(folder):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    if key in index:
                        raise CheckpointError(f"{folder}: {key} appears in {index[key][2].name} and {file.name}")
                    piece = handle.get_slice(key)
                    index[key] = (tuple(piece.get_shape()), piece.get_dtype(), file)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"cannot read {file}: {err}") from err
    return index


def _read_tensors(
    sources: dict[str, tuple[Path, str]], dtype: torch.dtype | None, device: str | torch.device
) -> dict[str, torch.Tensor]:
    """Read each (file, key) once, file by file, cast to `dtype` one tensor at a time."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, (file, key) in sources.items():
        by_file.setdefault(file, []).append((name, key))
    state: dict[str, torch.Tensor] = {}
    for file, entries in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name, key in entries:
                    tensor = handle.get_tensor(key)
                    if dtype is not None and tensor.dtype != dtype:
                        tensor = tensor.to(dtype)
                    state[name] = aligned(tensor.to(device))
        except Exception as err:
            raise CheckpointError(f"cannot read tensors of {file}: {err}") from err
    return state


def _is_pg_vla_model_file(path: Path) -> bool:
    from pg_vla.model.checkpoint import FORMAT

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err


def _latest_checkpoint(folder: Path, verify: bool) -> Path | None:
    """The newest intact step folder under `folder`; None when it holds none; an error when it holds
    step folders of which none is intact (naming the newest one's damage)."""
    if not folder.is_dir():
        return None
    from pg_vla.checkpoint_folder import find_latest_checkpoint, list_checkpoints, verify_checkpoint

    found = find_latest_checkpoint(folder, verify=verify)
    candidates = list_checkpoints(folder)
    if found is None and candidates:
        try:
            verify_checkpoint(candidates[-1])
        except CheckpointError as err:
            raise CheckpointError(
                f"{folder} holds {len(candidates)} checkpoint(s), none of them intact; the newest: {err}"
            ) from None
    return found


def _verified(folder: Path, verify: bool) -> Path:
    """`folder`, after checking it against its manifest when it has one and `verify` is set."""
    from pg_vla.checkpoint_folder import MANIFEST_FILE, verify_checkpoint

    if verify and (folder / MANIFEST_FILE).is_file():
        verify_checkpoint(folder)
    return folder
