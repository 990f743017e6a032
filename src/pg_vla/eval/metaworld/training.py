"""Train pi0 on scripted Meta-World demonstrations on CPU, generating what is missing first.

    uv run scripts/run.py --config-name=metaworld [n_updates=... log_dir=...]

When `data.data_path` / `pretrained_model_path` are null, `run` makes, once, under
`metaworld.cache_dir`: the demonstrations (RLDS, written by a subprocess, since tensorflow and the
EGL renderer cannot share a process and tensorflow never enters the training process) and a random tiny
PaliGemma (the "small" variant: 112x112 images, 4 Gemma layers), then the regular trainer runs on them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pg_vla.eval.metaworld.demos import DATASET_NAME, DATASET_VERSION
from pg_vla.eval.metaworld.rendering import DEFAULT_CAMERA


def demos_path(
    cache_dir: str | Path,
    tasks: Sequence[str],
    episodes_per_task: int,
    camera: str = DEFAULT_CAMERA,
    secondary_camera: str | None = None,
) -> Path:
    """The data root of one demonstration set (one folder per task list, size and views)."""
    view = "" if camera == DEFAULT_CAMERA else f"_{camera}"
    view += f"_and_{secondary_camera}" if secondary_camera else ""
    return Path(cache_dir) / f"demos_{len(tasks)}tasks_{episodes_per_task}ep{view}"


def prepare_demos(
    cache_dir: str | Path,
    tasks: Sequence[str],
    episodes_per_task: int,
    workers: int,
    camera: str = DEFAULT_CAMERA,
    secondary_camera: str | None = None,
) -> Path:
    """-> the data path holding metaworld/1.0.0, generated (in a subprocess) when missing."""
    data_path = demos_path(cache_dir, tasks, episodes_per_task, camera, secondary_camera)
    if not (data_path / DATASET_NAME / DATASET_VERSION / "dataset_info.json").is_file():
        command = [
            sys.executable,
            "-m",
            "pg_vla.eval.metaworld.demos",
            "--output_dir",
            str(data_path),
            "--tasks",
            *tasks,
            "--episodes_per_task",
            str(episodes_per_task),
            "--workers",
            str(workers),
            "--camera",
            camera,
            *(["--secondary_camera", secondary_camera] if secondary_camera else []),
            "--overwrite",
        ]
        print("generating demonstrations:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return data_path


def prepare_paligemma(cache_dir: str | Path, variant: str = "small") -> Path:
    """-> a random tiny PaliGemma folder of `variant`, written when missing."""
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint

    model_path = Path(cache_dir) / f"paligemma_{variant}"
    if not (model_path / "config.json").is_file():
        make_tiny_paligemma_checkpoint(model_path, variant=variant, seed=0)
    return model_path


def run(cfg: Any) -> dict[str, Any]:
    """Hydra `_target_`: prepare demonstrations and the tiny PaliGemma when not given, then train."""
    from omegaconf import DictConfig, OmegaConf

    from pg_vla.training.trainer import train

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    options = data.pop("metaworld")
    if options.get("secondary_camera") and "secondary" not in data["data"].get("camera_roles", ()):
        raise ValueError(
            f"metaworld.secondary_camera={options['secondary_camera']} renders a second view that training "
            "would not read: add data.camera_roles=[primary,secondary]"
        )
    if not data["data"].get("data_path"):
        data_path = prepare_demos(
            options["cache_dir"],
            options["tasks"],
            options["episodes_per_task"],
            options["workers"],
            options.get("camera", DEFAULT_CAMERA),
            options.get("secondary_camera"),
        )
        data["data"] = {**data["data"], "data_path": str(data_path)}
    if not data.get("pretrained_model_path"):
        data["pretrained_model_path"] = str(prepare_paligemma(options["cache_dir"], options["paligemma_variant"]))
    return train(data)
