"""Offline evaluation end to end, and the discrete head through the unchanged trainer and Policy.

The evaluation command runs as a subprocess on a small Parquet file; its metrics are recomputed with
numpy from its own predictions CSV, and its truths are checked against the raw episode actions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.data.parquet import ParquetEpisodeWriter

ROOT = Path(__file__).resolve().parents[1]
BRIDGE_STATISTICS = ROOT / "config" / "bridge_statistics.json"
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
EPISODE_LENGTHS = (6, 5, 7)
HORIZON, ACTION_DIM = 4, 7  # make_policy_checkpoint's model
FLOAT32 = 1e-5  # values that went through float32 (loader, model outputs)

torch.set_num_threads(1)


def _jpeg(value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """Three labeled episodes whose actions lie inside the bridge p01..p99 bounds (gripper 0/1), so
    normalizing and de-normalizing them is exact up to float32."""
    stats = json.loads(BRIDGE_STATISTICS.read_text())
    rng = np.random.default_rng(0)
    low, high = np.array(stats["action"]["p01"]), np.array(stats["action"]["p99"])
    plow, phigh = np.array(stats["proprio"]["p01"]), np.array(stats["proprio"]["p99"])
    folder = tmp_path_factory.mktemp("eval_parquet")
    actions = []
    with ParquetEpisodeWriter(folder, rows_per_group=8) as writer:
        for e, length in enumerate(EPISODE_LENGTHS):
            action = rng.uniform(low, high, size=(length, ACTION_DIM))
            action[:, -1] = rng.integers(0, 2, length)
            state = rng.uniform(plow, phigh, size=(length, ACTION_DIM))
            writer.add_episode(
                [_jpeg(20 * e + 3 * t) for t in range(length)],
                state,
                action,
                f"put the block {e} away",
                episode_id=f"ep{e}",
            )
            actions.append(action.astype(np.float32))
    return folder, actions


def _eval(checkpoint: Path, data: Path, output: Path, *extra: str) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "scripts/eval_offline.py",
            "--checkpoint_path",
            str(checkpoint),
            "--eval_data_path",
            str(data),
            "--output_dir",
            str(output),
            "--batch_size",
            "4",
            "--num_workers",
            "0",
            "--seed",
            "3",
            *extra,
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output / "metrics.json").read_text())


def _read_predictions(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def grid(kind: str, dtype=np.float64) -> np.ndarray:  # (N, H, A)
        return np.array(
            [[[float(r[f"{kind}_h{h}_d{d}"]) for d in range(ACTION_DIM)] for h in range(HORIZON)] for r in rows],
            dtype=dtype,
        )

    out = {
        "sample": np.array([int(r["sample"]) for r in rows]),
        "episode_id": np.array([r["episode_id"] for r in rows]),
        "step": np.array([int(r["step"]) for r in rows]),
        "valid": np.array([[r[f"valid_h{h}"] == "1" for h in range(HORIZON)] for r in rows]),
    }
    for kind in ("true_norm", "pred_norm", "true", "pred"):
        out[kind] = grid(kind)
    if "true_bin_h0_d0" in rows[0]:
        out["true_bin"], out["pred_bin"] = grid("true_bin", np.int64), grid("pred_bin", np.int64)
    return out


def _numpy_metrics(p: dict[str, np.ndarray]) -> dict[str, object]:
    valid = p["valid"]
    out: dict[str, object] = {"num_samples": len(valid), "num_valid_steps": int(valid.sum())}
    for units, (pred, true) in (("_normalized", (p["pred_norm"], p["true_norm"])), ("", (p["pred"], p["true"]))):
        error = pred[valid] - true[valid]  # (V, A)
        out[f"mse{units}_per_dim"] = (error**2).mean(0)
        out[f"mae{units}_per_dim"] = np.abs(error).mean(0)
        out[f"mse{units}"], out[f"mae{units}"] = (error**2).mean(), np.abs(error).mean()
    worst = np.where(valid[..., None], np.abs(p["pred_norm"] - p["true_norm"]), 0.0).max(axis=(1, 2))  # (N,)
    for th in THRESHOLDS:
        out[f"accuracy@{th:g}"] = (worst <= th).mean()
    if "true_bin" in p:
        correct = p["true_bin"][valid] == p["pred_bin"][valid]  # (V, A)
        out["bin_accuracy_per_dim"], out["bin_accuracy"] = correct.mean(0), correct.mean()
    return out


@pytest.mark.parametrize("head", ["flow", "discrete"])
def test_offline_eval_metrics_equal_numpy_over_its_predictions(head, episodes, tiny_checkpoint_dir, tmp_path):
    from conftest import make_policy_checkpoint

    data, raw_actions = episodes
    overrides = (
        {"action_head": "discrete", "num_action_bins": 16, "discrete_mlp_hidden_dims": [16]}
        if head == "discrete"
        else {}
    )
    checkpoint = make_policy_checkpoint(tmp_path / "checkpoints", tiny_checkpoint_dir, seed=1, **overrides)
    metrics = _eval(checkpoint, data, tmp_path / "eval", "--save_predictions")
    p = _read_predictions(tmp_path / "eval" / "predictions.csv")

    # one ordered pass over every step of every episode
    expected_ids = [f"ep{e}" for e, n in enumerate(EPISODE_LENGTHS) for _ in range(n)]
    assert list(p["episode_id"]) == expected_ids and list(p["sample"]) == list(range(sum(EPISODE_LENGTHS)))
    assert list(p["step"]) == [t for n in EPISODE_LENGTHS for t in range(n)]
    # the truths are the recorded chunks: original units back to the raw actions, the mask marks the episode end
    for i, (episode, step) in enumerate(zip(p["episode_id"], p["step"])):
        action = raw_actions[int(episode[2:])]
        chunk = step + np.arange(HORIZON)
        np.testing.assert_array_equal(p["valid"][i], chunk < len(action))
        np.testing.assert_allclose(p["true"][i], action[np.minimum(chunk, len(action) - 1)], atol=FLOAT32)
    # de-normalization with the checkpoint's statistics (bounds; the gripper stays as it is)
    stats = json.loads(BRIDGE_STATISTICS.read_text())["action"]
    low, high = np.array(stats["p01"]), np.array(stats["p99"])
    unnormalized = (np.clip(p["pred_norm"], -1, 1) + 1) / 2 * (high - low) + low
    unnormalized[..., -1] = p["pred_norm"][..., -1]
    np.testing.assert_allclose(p["pred"], unnormalized, atol=1e-9)

    reference = _numpy_metrics(p)
    assert metrics["action_head"] == head and metrics["dataset_name"] == "bridge_dataset"
    for key, value in reference.items():
        np.testing.assert_allclose(
            np.asarray(metrics[key], dtype=np.float64), value, rtol=1e-9, atol=1e-12, err_msg=key
        )
    assert ("bin_accuracy" in metrics) == (head == "discrete")
    if head == "discrete":  # bins of the truths by numpy; arg-max decoding returns bin centres
        k = metrics["num_action_bins"]
        np.testing.assert_array_equal(p["true_bin"], np.clip(np.floor((p["true_norm"] + 1) / (2 / k)), 0, k - 1))
        np.testing.assert_allclose(p["pred_norm"], -1 + (p["pred_bin"] + 0.5) * 2 / k, atol=FLOAT32)
    else:  # the flow noise comes from the seed: the same run in this process gives the same metrics
        from pg_vla.eval.offline import OfflineEvalConfig, run

        again = run(
            OfflineEvalConfig(
                checkpoint_path=str(checkpoint),
                eval_data_path=[str(data)],
                output_dir=str(tmp_path / "again"),
                batch_size=4,
                num_workers=0,
                seed=3,
            )
        )
        assert again["mse_normalized_per_dim"] == pytest.approx(metrics["mse_normalized_per_dim"], abs=1e-6)
    from PIL import Image

    with Image.open(tmp_path / "eval" / "trajectories.png") as image:
        assert image.size[0] > 200 and image.size[1] > 100


def test_max_batches_and_no_predictions_file(episodes, tiny_policy_checkpoint, tmp_path):
    from pg_vla.eval.offline import OfflineEvalConfig, run

    data, _ = episodes
    metrics = run(
        OfflineEvalConfig(
            checkpoint_path=str(tiny_policy_checkpoint),
            eval_data_path=[str(data)],
            output_dir=str(tmp_path),
            batch_size=4,
            max_batches=2,
            num_workers=0,
        )
    )
    assert metrics["num_batches"] == 2 and metrics["num_samples"] == 8
    assert not (tmp_path / "predictions.csv").exists() and (tmp_path / "metrics.json").is_file()
    with pytest.raises(ValueError, match="eval_data_path is empty"):
        OfflineEvalConfig(checkpoint_path="x", eval_data_path=[], output_dir=str(tmp_path))


def test_rlds_data_config_uses_the_checkpoint_statistics(episodes, tiny_policy_checkpoint, tmp_path):
    """The RLDS branch builds a valid, ordered, single-dataset RLDSConfig (no data is read here)."""
    from pg_vla.data.dataloader import rlds_config
    from pg_vla.eval.offline import OfflineEvalConfig, data_config, detect_source
    from pg_vla.policy import Policy

    data, _ = episodes
    assert detect_source([str(data)]) == "parquet" and detect_source([str(tmp_path)]) == "rlds"
    policy = Policy.from_checkpoint(tiny_policy_checkpoint)
    cfg = OfflineEvalConfig(
        checkpoint_path=str(tiny_policy_checkpoint),
        eval_data_path=[str(tmp_path)],
        output_dir=str(tmp_path / "out"),
        split="val",
    )
    options = data_config(cfg, policy, tiny_policy_checkpoint)
    assert options["source"] == "rlds" and options["mix"] == "bridge" and options["split"] == "val"
    statistics = tiny_policy_checkpoint / "statistics" / "bridge_dataset.json"
    assert options["statistics_paths"] == {"bridge_dataset": str(statistics)}
    rlds = rlds_config(
        **{k: v for k, v in options.items() if k != "source"},
        batch_size=2,
        image_size=32,
        cond_steps=1,
        horizon_steps=HORIZON,
        seed=0,
    )
    assert not rlds.train and rlds.data_path == str(tmp_path)
    with pytest.raises(ValueError, match="a mix holding only 'bridge_dataset'"):
        data_config(
            OfflineEvalConfig(checkpoint_path="x", eval_data_path=[str(tmp_path)], output_dir="y", mix="oxe_simple"),
            policy,
            tiny_policy_checkpoint,
        )


def test_run_config_normalization_and_image_resize_carry_over(episodes, tiny_policy_checkpoint, tmp_path):
    """A checkpoint trained with data.normalization=quantile and data.image_resize=pad: the eval data is read
    with both, truths normalized with openpi's pi0.5 formula (by hand) and de-normalized back exactly."""
    from pg_vla.eval.offline import OfflineEvalConfig, data_config, run
    from pg_vla.policy import Policy

    data, raw_actions = episodes
    checkpoint = tmp_path / "ckpt"
    from conftest import edited_copy

    edited_copy(tiny_policy_checkpoint, checkpoint)  # its config edited below
    config = json.loads((checkpoint / "config.json").read_text())
    config["data"].update(normalization="quantile", image_resize="pad")
    (checkpoint / "config.json").write_text(json.dumps(config))
    cfg = OfflineEvalConfig(
        checkpoint_path=str(checkpoint),
        eval_data_path=[str(data)],
        output_dir=str(tmp_path / "out"),
        batch_size=4,
        num_workers=0,
        save_predictions=True,
    )
    policy = Policy.from_checkpoint(checkpoint)
    options = data_config(cfg, policy, checkpoint)
    assert options["normalization"] == "quantile" and options["image_resize"] == "pad"
    rlds = data_config(
        OfflineEvalConfig(checkpoint_path=str(checkpoint), eval_data_path=[str(tmp_path)], output_dir="y"),
        policy,
        checkpoint,
    )
    assert rlds["normalization"] == "quantile" and rlds["image_resize"] == "pad"
    run(cfg)
    p = _read_predictions(tmp_path / "out" / "predictions.csv")
    stats = json.loads(BRIDGE_STATISTICS.read_text())["action"]
    low, high = np.array(stats["p01"]), np.array(stats["p99"])
    for i, (episode, step) in enumerate(zip(p["episode_id"], p["step"])):
        action = raw_actions[int(episode[2:])].astype(np.float64)
        chunk = action[np.minimum(step + np.arange(HORIZON), len(action) - 1)]  # (H, A)
        expected = 2 * (chunk - low) / (high - low + 1e-6) - 1
        expected[:, -1] = chunk[:, -1]  # the gripper is not normalized
        np.testing.assert_allclose(p["true_norm"][i], expected, atol=FLOAT32)
        np.testing.assert_allclose(p["true"][i], chunk, atol=FLOAT32)
    unnormalized = (p["pred_norm"] + 1) / 2 * (high - low + 1e-6) + low  # not clipped
    unnormalized[..., -1] = p["pred_norm"][..., -1]
    np.testing.assert_allclose(p["pred"], unnormalized, atol=1e-9)


def test_discrete_head_trains_and_serves_without_code_changes(episodes, tiny_checkpoint_dir, tmp_path):
    """`model.action_head=discrete` through the trainer (with validation) and Policy, nothing else changed."""
    from pg_vla.model.checkpoint import load_model
    from pg_vla.policy import Observation, Policy
    from pg_vla.training.trainer import train

    data, _ = episodes
    log_dir = tmp_path / "run"
    result = train(
        {
            "pretrained_model_path": str(tiny_checkpoint_dir),
            "log_dir": str(log_dir),
            "device": "cpu",
            "data": {
                "source": "parquet",
                "paths": [str(data)],
                "val_paths": [str(data)],
                "dataset_name": "my_robot",
                "num_workers": 0,
                "shuffle_buffer": 8,
                "statistics_dir": str(tmp_path / "stats"),
            },
            "model": {
                "action_head": "discrete",
                "max_text_tokens": 12,
                "num_action_bins": 32,
                "discrete_mlp_hidden_dims": [32],
                "freeze_vision": True,
            },
            "n_updates": 2,
            "global_batch_size": 4,
            "per_device_batch_size": 2,
            "save_every": 2,
            "log_every": 1,
            "validation": {"every": 2, "batches": 1},
        }
    )
    assert np.isfinite(result["loss"]) and np.isfinite(result["val_loss"]) and "val_accuracy@0.1" in result
    checkpoint = log_dir / "checkpoints" / "step_000002"
    model = load_model(checkpoint / "model.safetensors")
    assert model.is_discrete and model.config.num_action_bins == 32 and model.config.freeze_vision

    policy = Policy.from_checkpoint(log_dir)
    observation = Observation(
        images={"primary": np.full((20, 24, 3), 90, np.uint8)},
        state=np.linspace(0.1, 0.3, ACTION_DIM),
        prompt="put the block 0 away",
    )
    out = policy.infer(observation, seed=0)
    assert out["actions"].shape == (HORIZON, ACTION_DIM) and np.isfinite(out["actions"]).all()
    centers = -1 + (np.arange(32) + 0.5) * 2 / 32  # arg-max decoding: every value is a bin centre
    assert np.abs(out["normalized_actions"][..., None] - centers).min(-1).max() < FLOAT32


def test_a_lerobot_folder_evaluates_like_the_same_episodes_as_parquet(episodes, tiny_policy_checkpoint, tmp_path):
    """The Parquet episodes rewritten as a LeRobot v3.0 folder (the same JPEG bytes, frames in the parquet):
    detected as LeRobot, read in order with the checkpoint's statistics, the same metrics to float32."""
    import pyarrow.parquet as pq

    from pg_vla.data.lerobot import LeRobotWriter
    from pg_vla.eval.offline import OfflineEvalConfig, detect_source, run

    data, _ = episodes
    table = pq.read_table(sorted(data.glob("*.parquet"))).to_pydict()
    starts = [i for i, first in enumerate(table["is_first"]) if first] + [len(table["is_first"])]
    with LeRobotWriter(tmp_path / "lerobot", fps=10, cameras=("observation.image",), video=False) as writer:
        for lo, hi in zip(starts, starts[1:]):
            writer.add_episode(
                np.asarray(table["state"][lo:hi]),
                np.asarray(table["action"][lo:hi]),
                table["prompt"][lo],
                {"observation.image": table["image_1"][lo:hi]},
            )
    assert detect_source([str(tmp_path / "lerobot")]) == "lerobot"

    def evaluate(path: Path, name: str) -> dict:
        return run(
            OfflineEvalConfig(
                checkpoint_path=str(tiny_policy_checkpoint),
                eval_data_path=[str(path)],
                output_dir=str(tmp_path / name),
                batch_size=4,
                num_workers=0,
                seed=3,
                plot_episodes=0,
            )
        )

    parquet, lerobot = evaluate(data, "parquet"), evaluate(tmp_path / "lerobot", "lerobot")
    assert lerobot["num_samples"] == parquet["num_samples"] == sum(EPISODE_LENGTHS)
    for key, value in parquet.items():
        if isinstance(value, float):
            assert lerobot[key] == pytest.approx(value, rel=FLOAT32, abs=FLOAT32), key
