"""Write a pg-vla checkpoint in pi0's layout: a folder transformers' `PI0ForConditionalGeneration` loads.

    OUT/config.json                   transformers' PI0Config (model_type pi0)
    OUT/model.safetensors             the weights under save_pretrained's keys (pi0_format.py)
    OUT/statistics/<dataset>.json     the normalization statistics of the run
    OUT/pg_vla_training_config.json   the run's config (normalization mode, cameras, image resize, ...)
    OUT/tokenizer files               the run's tokenizer, at the top level as transformers expects
    OUT/README.md                     a model card: datasets, conventions, how to load

The folder is written next to OUT and renamed into place, so an interrupted export leaves nothing
half-written, and an existing OUT is never overwritten. pg-vla loads OUT back with
`PiZero.from_pretrained(OUT)` (as a transformers pi0 folder) to the same tensors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from pg_vla.model.checkpoint import load_model
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.pi0_format import export_tensors, refuse_unexportable, transformers_config
from pg_vla.model.pretrained import PG_VLA_MODEL_FILE, detect_layout

TRAINING_CONFIG_FILE = "pg_vla_training_config.json"


def export_pi0(
    checkpoint_path: str | Path, output_dir: str | Path, dtype: torch.dtype | None = None, verify: bool = True
) -> Path:
    """pg-vla checkpoint (step folder, checkpoints/ folder or log_dir) -> a pi0 folder at `output_dir`.
    verify: check the checkpoint against its manifest first."""
    layout, folder = detect_layout(checkpoint_path, verify)
    if layout != "pg-vla":
        raise CheckpointError(f"{checkpoint_path} is a {layout} folder, not a pg-vla checkpoint: nothing to export")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --output_dir")
    model = load_model(folder / PG_VLA_MODEL_FILE, dtype=dtype)
    refuse_unexportable(model.config)  # before anything is written
    run_config = _read_json(folder / "config.json")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        transformers_config(model.config).save_pretrained(str(tmp))
        save_file(
            export_tensors(model.state_dict(), model.config), str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        if (folder / "statistics").is_dir():
            shutil.copytree(folder / "statistics", tmp / "statistics")
        if (folder / "tokenizer").is_dir():
            for item in (folder / "tokenizer").iterdir():
                if item.is_file():
                    shutil.copyfile(item, tmp / item.name)
        (tmp / TRAINING_CONFIG_FILE).write_text(json.dumps(run_config, indent=1, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(model_card(model.config, run_config, folder, tmp))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(config, run_config: dict, source: Path, folder: Path) -> str:
    data = run_config.get("data", {}) if isinstance(run_config, dict) else {}
    datasets = sorted(p.stem for p in (folder / "statistics").glob("*.json"))
    vis, vlm, act = config.vision, config.vlm, config.action_expert
    lines = [
        "# pi0 policy exported by pg-vla",
        "",
        f"Exported from `{source}`. Trained on: {', '.join(datasets) or 'unknown'}"
        + (f" (mix `{data['mix']}`)" if data.get("mix") else "")
        + ".",
        "",
        "## Load",
        "- transformers: `PI0ForConditionalGeneration.from_pretrained(this_folder)`",
        "- pg-vla: `PiZero.from_pretrained(this_folder)`, or `pretrained_model_path=this_folder` to fine-tune",
        "",
        "## Conventions",
        f"- images: {config.num_cameras} camera(s) {data.get('camera_roles', '')}, {vis.image_size} px, "
        f"scaled to [-1, 1], resized by `{data.get('image_resize', 'stretch')}`",
        f"- state: {config.proprio_dim} values, one token; actions: chunks of {config.horizon_steps} x "
        f"{config.action_dim}",
        f"- normalization: `{data.get('normalization', 'bounds')}` with `statistics/<dataset>.json` "
        "(state and actions; the model reads and predicts normalized values)",
        f"- text: up to {config.max_text_tokens} tokens (PaliGemma tokenizer, prompt then a newline)",
        f"- flow matching: x_t = t noise + (1 - t) actions, predicted velocity noise - actions, "
        f"{config.num_inference_steps} Euler steps from t = 1",
        "",
        "## Sizes",
        f"- SigLIP {vis.hidden_size} wide x {vis.num_layers} layers, patch {vis.patch_size}; Gemma {vlm.hidden_size} "
        f"wide x {vlm.num_layers} layers, {vlm.num_heads} heads / {vlm.num_kv_heads} KV heads of {vlm.head_dim}; "
        f"action expert {act.hidden_size} wide",
        "- `paligemma_with_expert.gemma_expert.lm_head.weight` holds zeros: the action expert reads no tokens",
        "",
    ]
    return "\n".join(lines)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
