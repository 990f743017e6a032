"""Training options end to end: EMA weights in the saved checkpoints, validation metrics, wandb
offline/disabled, QLoRA with a partial resume state (the trainer in-process on tiny Parquet episodes), and
data.source=parquet through scripts/run.py with the README's keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "quickstart.episodes=4",
    "quickstart.image_size=32",
    "quickstart.evaluate=false",
    "model.action_head=flow",
    "global_batch_size=2",
    "per_device_batch_size=2",
    "schedule.warmup_steps=1",
    "log_every=1",
    "save_every=1",
    "keep_last_n=null",
    "data.shuffle_buffer=20",
    "validation.batches=1",
]


def _run(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "VLA_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_MODE", None)  # the config decides
    result = subprocess.run(
        [sys.executable, "scripts/run.py", "--config-name=quickstart", *TINY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _checkpoint(run: Path, step: int) -> tuple[dict[str, torch.Tensor], dict]:
    folder = run / "checkpoints" / f"step_{step:06d}"
    from pg_vla.training.checkpoint import read_training_state

    return load_file(str(folder / "model.safetensors")), read_training_state(folder)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features_cache")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """train/ (4 episodes) and val/ (2) of 5-D state, 4-D actions, 32x32 frames."""
    root = tmp_path_factory.mktemp("feature_episodes")
    _write_parquet_episodes(root / "train", 4, seed=0)
    _write_parquet_episodes(root / "val", 2, seed=1)
    return root


def _train(episodes: Path, paligemma: Path, log_dir: Path, **overrides) -> None:
    """The trainer in-process (no interpreter or data-worker start-up), tiny sizes, Parquet data."""
    from pg_vla.training.config import TrainConfig
    from pg_vla.training.trainer import Trainer

    cfg = {
        "pretrained_model_path": str(paligemma),
        "log_dir": str(log_dir),
        "seed": 0,
        "global_batch_size": 2,
        "per_device_batch_size": 2,
        "device": "cpu",
        "log_every": 1,
        "save_every": 1,
        "keep_last_n": None,
        "model": {
            "max_text_tokens": 12,
            "horizon_steps": 4,
            "action_expert": {"hidden_size": 32, "intermediate_size": 64},
        },
        "optimizer": {"name": "adamw", "vlm_lr": 3e-4, "action_expert_lr": 1e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 1, "total_steps": overrides["n_updates"]},
        "validation": {"every": None, "batches": 1},
        "data": {
            "source": "parquet",
            "paths": [str(episodes / "train")],
            "val_paths": [str(episodes / "val")],
            "num_workers": 0,
            "shuffle_buffer": 20,
        },
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    Trainer(TrainConfig.from_dict(cfg)).run()


@pytest.mark.slow
def test_ema_checkpoints_validation_and_wandb_offline(
    episodes: Path, tiny_checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config decides
    run = tmp_path / "ema"
    _train(
        episodes,
        tiny_checkpoint_dir,
        run,
        n_updates=3,
        averaging={"kind": "ema", "decay": 0.5},
        validation={"every": 3},
        wandb={"mode": "offline"},
    )

    # model.safetensors holds the EMA, the training state the raw weights: ema_1 = raw_1,
    # ema_k = 0.5 ema_(k-1) + 0.5 raw_k for every trained tensor; frozen tensors are the raw ones.
    emas, states = zip(*[_checkpoint(run, k) for k in (1, 2, 3)])
    # raw weights are stored apart only when they differ from the published ones (at step 1 they do not)
    raws = [ema if state["model"] is None else state["model"] for ema, state in zip(emas, states)]
    assert states[0]["model"] is None and states[2]["model"] is not None
    trained = [k for k in raws[0] if not torch.equal(raws[0][k], raws[2][k])]
    assert len(trained) > 10
    for key in raws[0]:
        torch.testing.assert_close(emas[0][key], raws[0][key], atol=1e-6, rtol=0)
        expected = 0.5 * emas[1][key].double() + 0.5 * raws[2][key].double()
        torch.testing.assert_close(
            emas[2][key].double(), expected if key in trained else raws[2][key].double(), atol=1e-6, rtol=0, msg=key
        )
    assert any(not torch.allclose(emas[2][k], raws[2][k]) for k in trained)

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [3]
    accuracies = [val[0][f"val_accuracy@{th}"] for th in (0.05, 0.1, 0.2, 0.3, 0.5)]
    assert all(0.0 <= a <= 1.0 for a in accuracies) and accuracies == sorted(accuracies)
    assert val[0]["val_samples"] == 2 and val[0]["val_loss"] > 0

    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb")), list((run / "wandb").iterdir())


@pytest.mark.slow
def test_qlora_trains_adapters_only_and_resumes_from_trainable_state(
    episodes: Path, tiny_checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config decides
    run = tmp_path / "qlora"
    common = {
        "lora": True,
        "quantize": True,
        "lora_r": 2,
        "lora_alpha": 4,
        "optimizer": {"vlm_lr": 1e-2},
        "wandb": {"mode": "disabled"},
    }
    _train(episodes, tiny_checkpoint_dir, run, n_updates=2, **common)
    _train(episodes, tiny_checkpoint_dir, run, n_updates=3, **common)
    assert not (run / "wandb").exists()  # disabled: nothing written

    (merged_2, _), (merged_3, state_3) = _checkpoint(run, 2), _checkpoint(run, 3)
    # resuming needs only the trainable tensors: adapters and the action-expert side
    assert state_3["model_partial"] and all(
        ".lora_" in k or not k.startswith(("joint.experts.vlm", "vision_tower")) for k in state_3["model"]
    )
    assert "resumed" in (run / "log.jsonl").read_text()
    # Between two checkpoints a merged VLM weight moves by scaling x (B3 A3 - B2 A2): rank <= 2 r = 4, while the
    # 4-bit base (and its quantization error) cancels. Everything else on the VLM side stays exactly the same.
    linears = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")
    adapted = 0
    for key in merged_2:
        if not key.startswith(("joint.experts.vlm.layers", "vision_tower.encoder.layers")):
            continue
        delta = merged_3[key].double() - merged_2[key].double()
        if key.endswith(".weight") and key.split(".")[-2] in linears:
            adapted += int(delta.abs().max() > 0)
            singular = torch.linalg.svdvals(delta)  # float32 rounding of the merged weights adds a tiny tail
            assert singular[4] <= 1e-3 * singular[0], f"{key}: {singular[:6].tolist()}"
        else:
            assert torch.equal(merged_3[key], merged_2[key]), f"{key} changed"
    assert adapted > 5
    action = [k for k in merged_2 if k.startswith("action_decoder")]
    assert any(not torch.equal(merged_2[k], merged_3[k]) for k in action)


def _write_parquet_episodes(folder: Path, episodes: int, seed: int) -> None:
    import io

    import numpy as np
    from PIL import Image

    from pg_vla.data.parquet import ParquetEpisodeWriter

    rng = np.random.default_rng(seed)
    writer = ParquetEpisodeWriter(folder, rows_per_group=16)
    for index in range(episodes):
        length = int(rng.integers(6, 10))
        frames = []
        for _ in range(length):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
            frames.append(buffer.getvalue())
        state = rng.normal(size=(length, 5))
        action = np.concatenate([rng.normal(size=(length, 3)), rng.integers(0, 2, (length, 1))], axis=1)
        writer.add_episode(frames, state, action, "stack the blocks", episode_id=f"ep{index}")
    writer.close()


@pytest.mark.slow
def test_parquet_source_trains_validates_and_serves(cache: Path, tmp_path: Path) -> None:
    """data.source=parquet: same trainer, model sized from the data (5-D state, 4-D actions), a policy that loads."""
    import numpy as np

    from pg_vla.policy import Observation, Policy

    _write_parquet_episodes(tmp_path / "train", 4, seed=0)
    _write_parquet_episodes(tmp_path / "val", 2, seed=1)
    run = tmp_path / "parquet_run"
    _run(
        cache,
        f"log_dir={run}",
        "n_updates=2",
        "validation.every=2",
        "data.source=parquet",
        f"data.paths=[{tmp_path / 'train'}]",
        f"data.val_paths=[{tmp_path / 'val'}]",
        "data.dataset_name=lab",
        "data.num_workers=0",
    )  # the README's keys, no Hydra '+': they are in the config schema
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [2]
    policy = Policy.from_checkpoint(run)
    assert policy.dataset_name == "lab" and (policy.state_dim, policy.action_dim) == (5, 4)
    out = policy.infer(
        Observation(images={"primary": np.zeros((32, 32, 3), np.uint8)}, state=np.zeros(5), prompt="stack the blocks"),
        seed=0,
    )
    assert out["actions"].shape == (4, 4) and np.all(np.isfinite(out["actions"]))
