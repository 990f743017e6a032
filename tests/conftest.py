"""Shared fixtures: random tiny PaliGemma checkpoint folders (made once per test session, offline)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub
# Caches the code writes by default (statistics of read-only datasets, quickstart data) go to a folder of this
# session, not to the user's ~/.cache/pg_vla: each session computes what it checks.
os.environ["VLA_CACHE_DIR"] = tempfile.mkdtemp(prefix="pg_vla_test_cache_")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the "gqa" tiny PaliGemma (hub key layout, single model.safetensors, seed 0)."""
    return make_tiny_paligemma_checkpoint(tmp_path_factory.mktemp("tiny_paligemma_gqa"), variant="gqa", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir_odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the "odd_head_dim" tiny PaliGemma (head_dim 24 != hidden 48 / 4 heads, 1 KV head)."""
    return make_tiny_paligemma_checkpoint(
        tmp_path_factory.mktemp("tiny_paligemma_odd_head_dim"), variant="odd_head_dim", seed=0
    )


@pytest.fixture(scope="session")
def tiny_policy_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_dir: Path) -> Path:
    """A training checkpoint folder (as training writes it) of a random tiny pi0 for the bridge dataset:
    1 camera, horizon 4, cond 1, 7-D proprio and actions, the published bridge statistics."""
    return make_policy_checkpoint(tmp_path_factory.mktemp("tiny_policy") / "checkpoints", tiny_checkpoint_dir)


def make_policy_checkpoint(
    ckpt_dir: Path, paligemma_dir: Path, seed: int = 0, camera_roles: tuple[str, ...] | None = None, **model_overrides
) -> Path:
    import torch

    from pg_vla.model.paligemma.processing import VLAProcessor
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training.checkpoint import save_training_checkpoint

    torch.manual_seed(seed)
    overrides = {
        "proprio_dim": 7,
        "action_dim": 7,
        "horizon_steps": 4,
        "cond_steps": 1,
        "num_cameras": 1,
        "max_text_tokens": 12,
        "action_expert": {"hidden_size": 32, "intermediate_size": 64},
        **model_overrides,
    }
    model = PiZero.from_paligemma(paligemma_dir, **overrides)
    cfg = model.config
    processor = VLAProcessor.from_pretrained(
        paligemma_dir,
        max_text_tokens=cfg.max_text_tokens,
        image_size=cfg.vision.image_size,
        max_cameras=cfg.num_views,
    )
    statistics = Path(__file__).resolve().parents[1] / "config" / "bridge_statistics.json"
    run_config = {
        "data": {
            "mix": "bridge",
            "camera_roles": list(camera_roles or ["primary"] * cfg.num_cameras),
            "normalization": "bounds",
        },
        "model": overrides,
        "seed": seed,
    }
    return save_training_checkpoint(
        ckpt_dir, 1, model, config=run_config, statistics={"bridge_dataset": statistics}, tokenizer=processor
    )


@pytest.fixture(scope="session")
def tiny_episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parquet episodes for in-process trainer runs: train/ (4 episodes e0..e3) and val/ (2), 8 steps of 3-D
    state and actions, 16x16 frames."""
    import io

    import numpy as np
    from PIL import Image

    from pg_vla.data.parquet import ParquetEpisodeWriter

    root = tmp_path_factory.mktemp("tiny_episodes")
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
    for split, count in (("train", 4), ("val", 2)):
        with ParquetEpisodeWriter(root / split, rows_per_group=16) as writer:
            for episode in range(count):
                writer.add_episode(
                    [buffer.getvalue()] * 8,
                    rng.normal(size=(8, 3)),
                    rng.normal(size=(8, 3)),
                    "push",
                    episode_id=f"{split}{episode}",
                )
    return root


@pytest.fixture(scope="session")
def quickstart_runs(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart at tiny sizes as a user runs it, in two commands: 2 steps (checkpoint and validation every
    2), then the same command with n_updates=4, which resumes at step 2, trains to 4 and evaluates its last
    checkpoint offline. -> (root, (first, second) CompletedProcess); the run is root/run, the cache root/cache.
    The console is left as a user gets it (no TF_CPP_MIN_LOG_LEVEL, no PG_VLA_VERBOSE)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("quickstart")
    env = {k: v for k, v in os.environ.items() if k not in ("PG_VLA_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(VLA_CACHE_DIR=str(root / "cache"), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    args = [
        f"log_dir={root / 'run'}",
        "quickstart.episodes=3",
        "quickstart.val_episodes=2",
        "quickstart.episode_steps=8",
        "quickstart.image_size=32",
        "global_batch_size=4",
        "per_device_batch_size=2",  # two accumulation micro-batches per step
        "log_every=1",
        "validation.every=2",
        "validation.batches=1",
        "save_every=2",
        "data.shuffle_buffer=8",
        "schedule.warmup_steps=1",
    ]
    results = []
    for n_updates, evaluate in ((2, "false"), (4, "true")):
        result = subprocess.run(
            [sys.executable, "scripts/run.py", "--config-name=quickstart", *args]
            + [f"n_updates={n_updates}", f"quickstart.evaluate={evaluate}"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        results.append(result)
    return root, tuple(results)


def tiny_train_config(episodes: Path, paligemma: Path, log_dir: Path, **overrides):
    """A TrainConfig of a few CPU steps of the tiny model on `tiny_episodes` (the trainer runs in-process)."""
    from pg_vla.training.config import TrainConfig

    cfg = {
        "pretrained_model_path": str(paligemma),
        "log_dir": str(log_dir),
        "n_updates": 4,
        "seed": 0,
        "global_batch_size": 2,
        "per_device_batch_size": 2,
        "device": "cpu",
        "log_every": 1,
        "save_every": 1,
        "keep_last_n": None,
        "model": {
            "max_text_tokens": 8,
            "horizon_steps": 2,
            "action_expert": {"hidden_size": 32, "intermediate_size": 64},
        },
        "optimizer": {"name": "adamw", "vlm_lr": 1e-3, "action_expert_lr": 1e-3},
        "data": {
            "source": "parquet",
            "paths": [str(episodes / "train")],
            "val_paths": [str(episodes / "val")],
            "num_workers": 0,
            "shuffle_buffer": 16,
        },
        **overrides,
    }
    return TrainConfig.from_dict(cfg)


def edited_copy(checkpoint: Path, folder: Path, edit_weights=None) -> Path:
    """A copy of a checkpoint folder whose model.safetensors went through `edit_weights(state_dict)` (in place);
    its manifest is removed, as an edited folder no longer matches it (loaders then have nothing to verify)."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, folder)
    (folder / "manifest.json").unlink()
    if edit_weights is not None:
        model_file = folder / "model.safetensors"
        with safe_open(str(model_file), framework="pt") as handle:
            metadata = handle.metadata()
        state = load_file(str(model_file))
        edit_weights(state)
        save_file(state, str(model_file), metadata=metadata)
    return folder


# The suite runs in one process and uses both tensorflow (RLDS tests) and bitsandbytes; tensorflow
# imported first makes a later bitsandbytes import abort, so bitsandbytes goes first.
from pg_vla.utils.imports import import_bitsandbytes  # noqa: E402

import_bitsandbytes()
