"""Policy: checkpoint folder -> actions in robot units, checked against a by-hand float64 pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import edited_copy
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.policy import Observation, Policy, resolve_checkpoint_folder

PROMPT = "put the carrot on the plate"


def _observation(rng: np.random.Generator, state_dim: int = 7, size=(48, 64)) -> Observation:
    return Observation(
        images={"primary": rng.integers(0, 256, (*size, 3), dtype=np.uint8)},
        state=rng.normal(0, 0.1, state_dim),
        prompt=PROMPT,
    )


def test_infer_matches_hand_computed_normalization(tiny_policy_checkpoint: Path) -> None:
    policy = Policy.from_checkpoint(tiny_policy_checkpoint)
    stats = json.loads((tiny_policy_checkpoint / "statistics" / "bridge_dataset.json").read_text())
    obs = _observation(np.random.default_rng(0))
    out = policy.infer(obs, seed=3)

    # state: bounds normalization from the JSON, in float64, clipped
    p01, p99 = np.array(stats["proprio"]["p01"]), np.array(stats["proprio"]["p99"])
    state = np.clip(2 * (obs.state - p01) / (p99 - p01) - 1, -1, 1)
    text = policy.processor.tokenize([PROMPT])
    images = policy.processor.preprocess_images(obs.images["primary"][None, None])
    noise = torch.randn((1, 4, 7), generator=torch.Generator().manual_seed(3))
    normalized = policy.model.sample_actions(
        images,
        text["input_ids"],
        text["attention_mask"],
        torch.tensor(state, dtype=torch.float32)[None, None],
        noise=noise,
    )
    normalized = normalized[0].double().numpy()
    np.testing.assert_allclose(out["normalized_actions"], normalized, atol=1e-5)

    # actions: xyz + rpy de-normalized from [-1, 1], the gripper (last dim) not normalized, clipped to its
    # data range [min, max]
    a01, a99 = np.array(stats["action"]["p01"]), np.array(stats["action"]["p99"])
    expected = (np.clip(normalized, -1, 1) + 1) / 2 * (a99 - a01) + a01
    expected[:, 6] = np.clip(normalized[:, 6], stats["action"]["min"][6], stats["action"]["max"][6])
    assert out["actions"].shape == (4, 7)
    np.testing.assert_allclose(out["actions"], expected, atol=1e-5)


def test_same_seed_same_actions_and_batch_equals_single(tiny_policy_checkpoint: Path) -> None:
    policy = Policy.from_checkpoint(tiny_policy_checkpoint)
    rng = np.random.default_rng(1)
    a, b = _observation(rng), _observation(rng, size=(224, 224))
    first, again = policy.infer(a, seed=7)["actions"], policy.infer(a, seed=7)["actions"]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, policy.infer(a, seed=8)["actions"])
    noise = torch.cat([policy.noise(1, 7), policy.noise(1, 9)])
    batch = policy.infer_batch([a, b], noise=noise)["actions"]
    np.testing.assert_allclose(batch[0], first, atol=1e-5)
    np.testing.assert_allclose(batch[1], policy.infer(b, seed=9)["actions"], atol=1e-5)


def test_bad_observations_are_named(tiny_policy_checkpoint: Path) -> None:
    policy = Policy.from_checkpoint(tiny_policy_checkpoint)
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="state has 5 values, the policy expects 7"):
        policy.infer(_observation(rng, state_dim=5))
    obs = _observation(rng)
    with pytest.raises(ValueError, match="lacks camera image"):
        policy.infer(Observation(images={"wrist": obs.images["primary"]}, state=obs.state, prompt=PROMPT))
    with pytest.raises(ValueError, match="must be uint8"):
        policy.infer(
            Observation(images={"primary": obs.images["primary"].astype(np.float32)}, state=obs.state, prompt=PROMPT)
        )
    with pytest.raises(ValueError, match="NaN"):
        policy.infer(Observation(images=obs.images, state=np.full(7, np.nan), prompt=PROMPT))


def test_checkpoint_resolution_and_errors(tiny_policy_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tiny_policy_checkpoint.parent  # <run>/checkpoints
    assert resolve_checkpoint_folder(run_dir) == tiny_policy_checkpoint
    assert resolve_checkpoint_folder(run_dir.parent) == tiny_policy_checkpoint  # the run's log_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Policy.from_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a model folder pg-vla knows"):
        Policy.from_checkpoint(tmp_path)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_policy_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        Policy.from_checkpoint(broken)

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_policy_checkpoint, mixed)
    shutil.copy(
        Path(__file__).resolve().parents[1] / "config" / "fractal_statistics.json",
        mixed / "statistics" / "fractal20220817_data.json",
    )
    with pytest.raises(ValueError, match="choose the statistics with dataset_name"):
        Policy.from_checkpoint(mixed)
    with pytest.raises(ValueError, match="no statistics"):
        Policy.from_checkpoint(mixed, dataset_name="kuka")
    assert Policy.from_checkpoint(mixed, dataset_name="bridge_dataset").action_dim == 7


def _with_data_settings(checkpoint: Path, folder: Path, **data) -> Path:
    """A copy of `checkpoint` whose run config says `data.<key>=<value>` for the given keys."""
    edited_copy(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["data"].update(data)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("normalization", ["mean_std", "quantile", "gaussian"])
def test_run_config_modes_reach_inference(tiny_policy_checkpoint: Path, tmp_path: Path, normalization: str) -> None:
    """data.normalization and data.image_resize=pad of the run config: the state normalized and the actions
    de-normalized with openpi's formulas (float64 by hand), images padded black."""
    assert Policy.from_checkpoint(tiny_policy_checkpoint).processor.image_resize == "stretch"  # no key: stretch
    folder = _with_data_settings(
        tiny_policy_checkpoint, tmp_path / "ckpt", normalization=normalization, image_resize="pad"
    )
    policy = Policy.from_checkpoint(folder)
    assert policy.processor.image_resize == "pad"
    stats = json.loads((folder / "statistics" / "bridge_dataset.json").read_text())
    obs = _observation(np.random.default_rng(4), size=(24, 64))  # wide: padded above and below
    out = policy.infer(obs, seed=5)

    def by_hand(kind: str, x: np.ndarray) -> np.ndarray:
        st = {k: np.array(v) for k, v in stats[kind].items()}
        if normalization == "quantile":
            return 2 * (x - st["p01"]) / (st["p99"] - st["p01"] + 1e-6) - 1
        return (x - st["mean"]) / (st["std"] + 1e-6)

    state = by_hand("proprio", obs.state)
    np.testing.assert_allclose(policy.normalize_state(obs.state)[0], state, rtol=1e-6, atol=1e-6)
    images = policy.processor.preprocess_images(obs.images["primary"][None, None])  # (1, 1, 3, 32, 32)
    assert policy.config.vision.image_size == 32  # 24x64 -> 12x32 content, 10 black rows above and below
    assert torch.all(images[..., :10, :] == -1.0) and torch.all(images[..., 22:, :] == -1.0)
    assert (images[0, 0, :, 10:22, :] != -1.0).any(dim=0).any(dim=-1).all()  # every content row has content
    text = policy.processor.tokenize([PROMPT])
    noise = torch.randn((1, 4, 7), generator=torch.Generator().manual_seed(5))
    normalized = policy.model.sample_actions(
        images,
        text["input_ids"],
        text["attention_mask"],
        torch.tensor(state, dtype=torch.float32)[None, None],
        noise=noise,
    )
    normalized = normalized[0].double().numpy()
    np.testing.assert_allclose(out["normalized_actions"], normalized, atol=1e-5)
    st = {k: np.array(v) for k, v in stats["action"].items()}
    if normalization == "quantile":
        expected = (normalized + 1) / 2 * (st["p99"] - st["p01"] + 1e-6) + st["p01"]
    else:
        expected = normalized * (st["std"] + 1e-6) + st["mean"]
    expected[:, 6] = np.clip(normalized[:, 6], st["min"][6], st["max"][6])  # the gripper: not normalized, clipped
    np.testing.assert_allclose(out["actions"], expected, rtol=1e-5, atol=1e-5)


# ---- hardening: damaged weights, non-finite outputs, the gripper's range, devices -------------------------
def _flip_tensor_bytes(model_file: Path, count: int = 64) -> None:
    """Flip `count` bytes inside the tensor data (after the safetensors header), keeping the file's size."""
    data = bytearray(model_file.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(count):
        data[header + 1000 + 37 * i] ^= 0xFF
    model_file.write_bytes(bytes(data))


def test_flipped_bytes_in_a_step_folder_are_refused_by_every_loader(
    tiny_policy_checkpoint: Path, tmp_path: Path
) -> None:
    from pg_vla.model.export import export_pi0
    from pg_vla.model.vla.pizero import PiZero

    folder = tmp_path / "checkpoints" / tiny_policy_checkpoint.name
    shutil.copytree(tiny_policy_checkpoint, folder)
    _flip_tensor_bytes(folder / "model.safetensors")
    for load in (
        lambda: Policy.from_checkpoint(folder),
        lambda: Policy.from_checkpoint(folder.parent),
        lambda: PiZero.from_pretrained(folder),
        lambda: export_pi0(folder, tmp_path / "export"),
    ):
        with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupted: sha256"):
            load()
    assert not (tmp_path / "export").exists()

    # verify=False (--no_verify) reads it anyway: the flipped bytes really change the actions
    obs = _observation(np.random.default_rng(5))
    damaged = Policy.from_checkpoint(folder, verify=False).infer(obs, seed=0)["actions"]
    intact = Policy.from_checkpoint(tiny_policy_checkpoint).infer(obs, seed=0)["actions"]
    assert not np.array_equal(damaged, intact)


def test_non_finite_actions_are_never_returned(tiny_policy_checkpoint: Path, tmp_path: Path) -> None:
    from pg_vla.policy import NonFiniteActionsError

    def poison(state: dict) -> None:
        state["action_decoder.bias"][2] = float("nan")

    policy = Policy.from_checkpoint(edited_copy(tiny_policy_checkpoint, tmp_path / "nan", poison))
    with pytest.raises(NonFiniteActionsError, match=r"non-finite action values of 28 \(NaN or inf\)"):
        policy.infer(_observation(np.random.default_rng(6)), seed=0)


def test_unnormalized_gripper_is_clipped_to_its_data_range(tiny_policy_checkpoint: Path, tmp_path: Path) -> None:
    """A constant velocity on the gripper dim drives the sample to -1 (sample_actions clips to [-1, 1]); the
    gripper is not normalized, so -1 would reach the robot as -1 for a 0..1 range: it gets the minimum."""

    def push(state: dict) -> None:
        state["action_decoder.weight"][6] = 0.0
        state["action_decoder.bias"][6] = 3.0

    policy = Policy.from_checkpoint(edited_copy(tiny_policy_checkpoint, tmp_path / "push", push))
    stats = json.loads((tiny_policy_checkpoint / "statistics" / "bridge_dataset.json").read_text())
    low, high = stats["action"]["min"][6], stats["action"]["max"][6]
    assert (low, high) == (0.0, 1.0)
    out = policy.infer(_observation(np.random.default_rng(7)), seed=1)
    np.testing.assert_array_equal(out["normalized_actions"][:, 6], -1.0)
    np.testing.assert_array_equal(out["actions"][:, 6], 0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_missing_gpu_is_named_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA device is visible on this machine"):
        Policy.from_checkpoint(tmp_path / "nowhere", device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        Policy.from_checkpoint(tmp_path / "nowhere", device="gpu")


@pytest.mark.parametrize(
    "data,expected",
    [
        ({}, [True] * 6 + [False]),  # an RLDS bridge run: bridge's mask (the gripper kept)
        ({"source": "parquet", "gripper_dims": 2}, [True] * 5 + [False] * 2),  # the Parquet loader's gripper_dims
        ({"source": "parquet", "gripper_dims": 0}, [True] * 7),
        ({"normalize_gripper": True}, [True] * 7),
    ],
)
def test_actions_are_denormalized_with_the_mask_training_used(
    tiny_policy_checkpoint: Path, tmp_path: Path, data: dict, expected: list[bool]
) -> None:
    policy = Policy.from_checkpoint(_with_data_settings(tiny_policy_checkpoint, tmp_path / "ckpt", **data))
    assert policy.action_normalizer.mask.tolist() == expected
    stats = json.loads((tiny_policy_checkpoint / "statistics" / "bridge_dataset.json").read_text())["action"]
    out = policy.infer(_observation(np.random.default_rng(8)), seed=2)
    y = out["normalized_actions"].astype(np.float64)
    p01, p99 = np.array(stats["p01"]), np.array(stats["p99"])
    by_hand = np.where(
        expected, (np.clip(y, -1, 1) + 1) / 2 * (p99 - p01) + p01, np.clip(y, stats["min"], stats["max"])
    )
    np.testing.assert_allclose(out["actions"], by_hand, atol=1e-5)
