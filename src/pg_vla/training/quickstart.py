"""The quickstart: generate a small dataset and a tiny PaliGemma checkpoint, train on CPU, evaluate.

    uv run scripts/run.py --config-name=quickstart [n_updates=10 log_dir=DIR]

Nothing is downloaded. The data are episodes of a task whose actions follow from what the model
sees (`pg_vla.data.rlds.reach_task`: reach the coloured square the instruction names, grasp, lift),
written in the exact bridge_dataset schema; the "pretrained" VLM is a random tiny PaliGemma written
with transformers, loaded through the same code as the real checkpoint. Both are made once under
`quickstart.cache_dir` and reused.

After training, the run's last checkpoint is evaluated offline on the held-out `val` episodes
(`pg_vla.eval.offline`: `log_dir/eval/metrics.json` and `trajectories.png`), and the commands that
serve, query and evaluate that checkpoint are printed.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

DATA_FOLDER = "reach_rlds"  # under the cache dir, so data of another generator version is never reused
MODEL_FOLDER = "paligemma_small"


def prepare(
    cache_dir: str | Path, episodes: int, image_size: int, val_episodes: int | None = None, episode_steps: int = 24
) -> tuple[Path, Path]:
    """-> (data path with bridge_dataset/1.0.0, PaliGemma folder), created when missing."""
    from pg_vla.data.rlds.dataset_configs import get_dataset_config
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint

    cache = Path(cache_dir)
    splits = {"train": int(episodes), "val": int(val_episodes if val_episodes is not None else episodes)}
    tag = f"{splits['train']}x{splits['val']}x{episode_steps}_{image_size}px"
    data_path, model_path = cache / DATA_FOLDER / tag, cache / MODEL_FOLDER
    bridge = get_dataset_config("bridge_dataset")
    if not (data_path / bridge.name / bridge.version / "dataset_info.json").is_file():
        _make_data(data_path, splits, episode_steps, image_size)
    if not (model_path / "config.json").is_file():
        make_tiny_paligemma_checkpoint(model_path, variant="small", seed=0)
    return data_path, model_path


def _make_data(data_path: Path, splits: dict[str, int], episode_steps: int, image_size: int) -> None:
    # tensorflow is used only in a separate process, like everywhere else in training.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pg_vla.utils.quiet import quiet_worker

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=quiet_worker) as pool:
        pool.submit(_write_reach, str(data_path), splits, episode_steps, image_size).result()


def _write_reach(data_path: str, splits: dict[str, int], episode_steps: int, image_size: int) -> None:
    from pg_vla.data.rlds.reach_task import make_reach_dataset
    from pg_vla.utils.quiet import is_verbose

    if not is_verbose([]):
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()

    make_reach_dataset(data_path, splits, num_steps=episode_steps, image_size=image_size, overwrite=True)


def evaluate(log_dir: Path, data_path: Path, *, batch_size: int, max_batches: int | None = None) -> dict[str, Any]:
    """Offline evaluation of the run's last checkpoint on the `val` split -> the metrics of metrics.json."""
    from pg_vla.eval.offline import OfflineEvalConfig, run

    return run(
        OfflineEvalConfig(
            checkpoint_path=str(log_dir),
            eval_data_path=[str(data_path)],
            output_dir=str(log_dir / "eval"),
            split="val",
            batch_size=batch_size,
            max_batches=max_batches,
            device="cpu",
        )
    )


def next_commands(
    checkpoint: Path, data_path: Path, image: Path, state: list[float], prompt: str, log_dir: Path
) -> list[str]:
    """The serve / infer / evaluate command lines for `checkpoint` (paths quoted for a shell)."""
    q = shlex.quote
    return [
        f"uv run scripts/serve_policy.py --checkpoint_path {q(str(checkpoint))} --port 8000 --device cpu",
        f"uv run scripts/infer.py --checkpoint_path {q(str(checkpoint))} --image1_paths {q(str(image))} "
        f"--prompt {q(prompt)} --state_vector {' '.join(f'{v:.4f}' for v in state)} --seed 0",
        f"uv run scripts/eval_offline.py --checkpoint_path {q(str(checkpoint))} --eval_data_path {q(str(data_path))} "
        f"--split val --output_dir {q(str(log_dir / 'eval'))}",
    ]


def _example_observation(log_dir: Path, image_size: int) -> tuple[Path, list[float], str]:
    """The first frame of held-out episode 0, saved as a PNG for the printed `infer.py` command."""
    from PIL import Image

    from pg_vla.data.rlds.reach_task import reach_episode

    step = reach_episode("val", 0, image_size=image_size)["steps"][0]
    path = log_dir / "eval" / "example_frame.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(step["observation"]["image_0"]).save(path)
    return path, [float(v) for v in step["observation"]["state"]], str(step["language_instruction"])


def run(cfg: Any) -> dict[str, Any]:
    """Hydra `_target_`: prepare the quickstart inputs, train with the rest of the config, then evaluate."""
    from omegaconf import DictConfig, OmegaConf

    from pg_vla.policy import resolve_checkpoint_folder
    from pg_vla.training.trainer import train

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    options = data.pop("quickstart")
    data_path, model_path = prepare(
        options["cache_dir"],
        options["episodes"],
        options["image_size"],
        options.get("val_episodes"),
        options.get("episode_steps", 24),
    )
    data["data"] = {**data["data"], "data_path": str(data_path)}
    data["pretrained_model_path"] = str(model_path)
    result = train(data)
    if not options.get("evaluate", True) or int(os.environ.get("RANK", 0)) != 0:
        return result  # under torchrun, rank 0 evaluates
    log_dir = Path(data["log_dir"])
    metrics = evaluate(
        log_dir, data_path, batch_size=data["per_device_batch_size"], max_batches=options.get("eval_batches")
    )
    result["eval"] = {
        k: v for k, v in metrics.items() if k.startswith("accuracy@") or k in ("num_samples", "mae_normalized")
    }
    checkpoint = resolve_checkpoint_folder(str(log_dir), False)
    image, state, prompt = _example_observation(log_dir, options["image_size"])
    print(
        f"\nOffline evaluation of {checkpoint} on {metrics['num_samples']} held-out samples: "
        + ", ".join(f"accuracy@{th:g} {metrics[f'accuracy@{th:g}']:.2f}" for th in metrics["thresholds"])
        + f"\n  {log_dir / 'eval' / 'metrics.json'}\n  {log_dir / 'eval' / 'trajectories.png'}"
        + f"\n  {log_dir / 'loss_curve.png'}\n\nNext:\n"
        + "\n".join(f"  {line}" for line in next_commands(checkpoint, data_path, image, state, prompt, log_dir)),
        flush=True,
    )
    return result
