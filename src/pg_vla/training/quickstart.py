"""The quickstart: generate a small dataset and a tiny PaliGemma checkpoint, then train on CPU.

    uv run scripts/run.py --config-name=quickstart [n_updates=10 log_dir=DIR]

Nothing is downloaded: the data are synthetic episodes in the exact bridge_dataset schema and the
"pretrained" VLM is a random tiny PaliGemma written with transformers, loaded through the same
code as the real checkpoint. Both are made once under `quickstart.cache_dir` and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepare(cache_dir: str | Path, episodes: int, image_size: int) -> tuple[Path, Path]:
    """-> (data path with bridge_dataset/1.0.0, PaliGemma folder), created when missing."""
    from pg_vla.data.rlds.dataset_configs import get_dataset_config
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint

    cache = Path(cache_dir)
    data_path, model_path = cache / "rlds", cache / "paligemma_small"
    bridge = get_dataset_config("bridge_dataset")
    if not (data_path / bridge.name / bridge.version / "dataset_info.json").is_file():
        _make_data(data_path, episodes, image_size)
    if not (model_path / "config.json").is_file():
        make_tiny_paligemma_checkpoint(model_path, variant="small", seed=0)
    return data_path, model_path


def _make_data(data_path: Path, episodes: int, image_size: int) -> None:
    # tensorflow is used only in a separate process, like everywhere else in training.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_write_bridge, str(data_path), episodes, image_size).result()


def _write_bridge(data_path: str, episodes: int, image_size: int) -> None:
    from pg_vla.data.rlds.synthetic import make_synthetic_bridge

    make_synthetic_bridge(data_path, episodes_per_split=episodes, image_size=(image_size, image_size), num_shards=2)


def run(cfg: Any) -> dict[str, Any]:
    """Hydra `_target_`: prepare the quickstart inputs, then train with the rest of the config."""
    from omegaconf import DictConfig, OmegaConf

    from pg_vla.training.trainer import train

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    options = data.pop("quickstart")
    data_path, model_path = prepare(options["cache_dir"], options["episodes"], options["image_size"])
    data["data"] = {**data["data"], "data_path": str(data_path)}
    data["pretrained_model_path"] = str(model_path)
    return train(data)
