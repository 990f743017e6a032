"""The scene-state readout: privileged object/goal positions of simulated data as an auxiliary target.

Data: the RLDS pipeline's `scene_state` against numpy (the stored full state's entries, normalized with
the bounds formula written out), its statistics against numpy quantiles, and the refusals. Model: the
loss term against a float64 mean squared error of the readout, where its gradient goes, and that the
readout learns where a square is in the image. Training: a short run reports `val_scene_state_mse`
and writes a checkpoint `Policy` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero

SCENE = [4, 5, 6, 36, 37, 38]  # the metaworld dataset config's entries of observation/full_state
IMAGE = 32


# ---- data ---------------------------------------------------------------------------------------------
def _episodes(count: int, seed: int) -> list[dict]:
    """Collected-episode dicts (demos.to_rlds_episode's input) of random content, 6..9 steps each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        length = int(rng.integers(6, 10))
        states = rng.normal(size=(length, 39)).astype(np.float32)
        states[:, SCENE] = states[:, SCENE] * np.array([0.1, 0.05, 0.02, 0.2, 0.1, 0.05]) + np.array(
            [0.0, 0.6, 0.02, -0.1, 0.8, 0.2]
        )
        out.append(
            {
                "images": rng.integers(0, 256, size=(length, IMAGE, IMAGE, 3), dtype=np.uint8),
                "states": states,
                "actions": rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
                "rewards": np.zeros(length, np.float32),
                "success": True,
                "instruction": "reach the goal",
                "task": "reach-v3",
                "seed": seed * 100 + i,
            }
        )
    return out


def _write_dataset(root: Path, ordered: bool) -> list[dict]:
    """A `metaworld` RLDS dataset (train: 6 episodes, val: 2) written by the demonstrations' own schema ->
    the training episodes. ordered: read back in written order (TFDS then refuses shuffled reading)."""
    from pg_vla.data.rlds.writer import write_rlds_dataset
    from pg_vla.eval.metaworld.demos import DATASET_NAME, DATASET_VERSION, metaworld_features, to_rlds_episode

    train, val = _episodes(6, seed=0), _episodes(2, seed=1)
    write_rlds_dataset(
        root,
        DATASET_NAME,
        DATASET_VERSION,
        metaworld_features(IMAGE),
        {"train": [to_rlds_episode(e) for e in train], "val": [to_rlds_episode(e) for e in val]},
        shuffle=not ordered,
    )
    return train


@pytest.fixture(scope="module")
def metaworld_data(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("scene_state_data")
    return root, _write_dataset(root, ordered=True)


def _rlds(root: Path, tmp_path: Path, **overrides):
    from pg_vla.data.rlds.config import RLDSConfig

    options = dict(
        data_path=str(root),
        mix="metaworld",
        train=False,
        image_size=IMAGE,
        batch_size=100,
        shuffle_buffer=4,
        read_threads=1,
        transform_threads=1,
        statistics_dir=str(tmp_path / "stats"),
        scene_state=True,
    )
    return RLDSConfig(**{**options, **overrides})


def test_pipeline_scene_state_is_the_normalized_stored_entries(metaworld_data, tmp_path: Path):
    from pg_vla.data.rlds import pipeline

    root, episodes = metaworld_data
    ds, info = pipeline.make_dataset(_rlds(root, tmp_path))
    batch = pipeline.to_numpy_batch(next(iter(ds)))

    scene = np.concatenate([e["states"][:, SCENE] for e in episodes]).astype(np.float64)  # (N, 6) every step
    stats = info.statistics["metaworld"].scene_state
    assert stats is not None and stats.dim == 6
    np.testing.assert_allclose(stats.mean, scene.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats.p01, np.quantile(scene, 0.01, axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats.p99, np.quantile(scene, 0.99, axis=0), rtol=0, atol=1e-6)

    # every frame of the ordered pass: its own step's entries, 2 (x - p01) / (p99 - p01) - 1 clipped to [-1, 1]
    assert batch["scene_state"].shape == (len(scene), 6) and batch["scene_state"].dtype == np.float32
    p01, p99 = np.quantile(scene, 0.01, axis=0), np.quantile(scene, 0.99, axis=0)
    for row, (tfds_id, step) in enumerate(zip(batch["tfds_id"], batch["step"])):
        episode = episodes[int(tfds_id.rsplit("__", 1)[1])]  # "<file>__<index>": one file, written in order
        raw = episode["states"][step, SCENE].astype(np.float64)
        expected = np.clip(2 * (raw - p01) / (p99 - p01) - 1, -1, 1)
        np.testing.assert_allclose(batch["scene_state"][row], expected, rtol=0, atol=1e-5)

    # without the option the batch layout is the one it always was
    plain = pipeline.to_numpy_batch(next(iter(pipeline.make_dataset(_rlds(root, tmp_path, scene_state=False))[0])))
    assert "scene_state" not in plain


def test_scene_state_refused_where_the_data_has_none(tmp_path: Path):
    from pg_vla.data.rlds.dataset_configs import DatasetConfig, check_scene_state, get_dataset_config
    from pg_vla.data.sources import scene_state_dim

    with pytest.raises(ValueError, match="bridge_dataset has none"):
        check_scene_state([get_dataset_config("bridge_dataset")])
    assert scene_state_dim({"mix": "metaworld"}) == 6
    with pytest.raises(ValueError, match="fractal20220817_data, bridge_dataset has none"):
        scene_state_dim({"mix": "oxe_simple"})
    with pytest.raises(ValueError, match="data.source=parquet has none"):
        scene_state_dim({"source": "parquet", "paths": [str(tmp_path)]})
    with pytest.raises(ValueError, match="scene_state_key and scene_state_indices go together"):
        DatasetConfig(
            name="x",
            version="1",
            image_keys={"primary": "image"},
            language_key="l",
            proprio_encoding="",
            proprio_dim=1,
            action_encoding="",
            action_dim=1,
            standardize_fn="metaworld",
            action_normalization_mask=(True,),
            scene_state_key="full_state",
        )


def test_fixed_statistics_without_a_scene_state_are_refused(metaworld_data, tmp_path: Path):
    from pg_vla.data.normalization import DatasetStatistics
    from pg_vla.data.rlds import pipeline

    root, _ = metaworld_data
    info = pipeline.prepare_mix(_rlds(root, tmp_path))
    stats = info.statistics["metaworld"]
    stripped = DatasetStatistics(stats.action, stats.proprio, stats.num_transitions, stats.num_trajectories)
    fixed = stripped.save(tmp_path / "fixed.json")
    assert "scene_state" not in json.loads(fixed.read_text())
    with pytest.raises(ValueError, match="fixed.json of metaworld hold no scene_state entry"):
        pipeline.prepare_mix(_rlds(root, tmp_path, statistics_paths={"metaworld": str(fixed)}))
    assert DatasetStatistics.load(info.statistics_paths["metaworld"]).scene_state.dim == 6  # saved and read back


# ---- model --------------------------------------------------------------------------------------------
def _inputs(cfg: PiZeroConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    actions = torch.rand(batch, cfg.horizon_steps, cfg.action_dim, generator=gen) * 2 - 1
    return {
        "images": torch.rand(batch, cfg.num_views, 3, size, size, generator=gen) * 2 - 1,
        "text_ids": torch.randint(4, cfg.vlm.vocab_size, (batch, cfg.max_text_tokens), generator=gen),
        "text_mask": None,
        "proprio": torch.rand(batch, cfg.cond_steps, cfg.proprio_dim, generator=gen) * 2 - 1,
        "actions": actions,
        "noise": torch.randn(actions.shape, generator=gen),
        "time": torch.rand(batch, generator=gen),
    }


@pytest.mark.parametrize("time_conditioning,cond_steps", [("mlp", 1), ("mlp", 2), ("adaln", 2)])
def test_loss_adds_the_weighted_mse_of_the_readout(time_conditioning: str, cond_steps: int):
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset(
        "tiny", scene_state_dim=5, scene_state_weight=0.3, time_conditioning=time_conditioning, cond_steps=cond_steps
    )
    model = PiZero(cfg).eval()
    inputs = _inputs(cfg, batch=3)
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        flow = model(**inputs)
        total = model(**inputs, scene_state=target)
        readout = model.predict_scene_state(inputs["images"], inputs["text_ids"], None, inputs["proprio"])
    # the readout of the training pass (proprio beside the action tokens) is the one of a pass without them
    expected = 0.3 * np.mean((readout.double().numpy() - target.double().numpy()) ** 2)
    assert abs((float(total) - float(flow)) - expected) < 1e-5
    assert expected > 1e-3  # a term that matters


def test_readout_gradient_trains_vision_and_action_expert_not_the_velocity_decoder():
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", scene_state_dim=4, scene_state_weight=1.0)
    model = PiZero(cfg)
    inputs = _inputs(cfg, batch=2)
    target = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    (model(**inputs, scene_state=target) - model(**inputs)).backward()  # the readout term alone
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["scene_state_decoder.weight"].abs().sum() > 0
    assert grads["vision_tower.embeddings.patch_embedding.weight"].abs().sum() > 0
    assert grads["joint.experts.action.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert grads["action_decoder.weight"].abs().max() < 1e-7  # the velocity is not what this term trains


def test_readout_learns_where_a_square_is():
    """A bright square at a random place in the image; the readout must learn its centre (held-out images)
    well below the error of predicting the mean, which is where a readout that ignores the image stays."""
    torch.manual_seed(0)
    cfg = PiZeroConfig.preset("tiny", scene_state_dim=2, scene_state_weight=1.0)
    model = PiZero(cfg)
    size, side = cfg.vision.image_size, cfg.vision.image_size // 4
    rng = np.random.default_rng(0)

    def scenes(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        corner = rng.integers(0, size - side, size=(n, 2))
        images = -torch.ones(n, 1, 3, size, size)
        for i, (y, x) in enumerate(corner):
            images[i, 0, :, y : y + side, x : x + side] = 1.0
        centre = (corner + side / 2) / size * 2 - 1  # (n, 2) in [-1, 1]
        return images, torch.tensor(centre, dtype=torch.float32)

    test_images, test_centres = scenes(64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        images, centres = scenes(16)
        inputs = {**_inputs(cfg, batch=16), "images": images}
        loss = model(**inputs, scene_state=centres)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fixed = _inputs(cfg, batch=64)
    predicted = model.predict_scene_state(test_images, fixed["text_ids"], None, fixed["proprio"]).numpy()
    truth = test_centres.numpy().astype(np.float64)
    mse = np.mean((predicted - truth) ** 2)
    mean_guess = np.mean((truth - truth.mean(0)) ** 2)
    assert mse < 0.6 * mean_guess, (mse, mean_guess)  # 0.45 x measured; untrained it is 1.0 x


def test_readout_refusals():
    with pytest.raises(ValueError, match="action_head=flow only"):
        PiZeroConfig.preset("tiny", scene_state_dim=3, action_head="discrete")
    with pytest.raises(ValueError, match="scene_state_dim must be an integer >= 0"):
        PiZeroConfig.preset("tiny", scene_state_dim=-1)
    with pytest.raises(ValueError, match="scene_state_weight must be >= 0"):
        PiZeroConfig.preset("tiny", scene_state_weight=-0.5)
    cfg = PiZeroConfig.preset("tiny")
    model = PiZero(cfg)
    inputs = _inputs(cfg, batch=2)
    with pytest.raises(ValueError, match="no scene-state readout"):
        model(**inputs, scene_state=torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="no scene-state readout"):
        model.predict_scene_state(inputs["images"], inputs["text_ids"], None, inputs["proprio"])
    with_readout = PiZero(PiZeroConfig.preset("tiny", scene_state_dim=3, scene_state_weight=1.0))
    with pytest.raises(ValueError, match=r"scene_state must be \(batch, 3\), got \(2, 4\)"):
        with_readout(**inputs, scene_state=torch.zeros(2, 4))


# ---- training ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_with_the_readout_validates_it_and_saves_a_loadable_policy(tiny_checkpoint_dir: Path, tmp_path: Path):
    from pg_vla.policy import Policy
    from pg_vla.training.config import TrainConfig
    from pg_vla.training.trainer import Trainer

    root = tmp_path / "data"
    _write_dataset(root, ordered=False)
    cfg = {
        "pretrained_model_path": str(tiny_checkpoint_dir),
        "log_dir": str(tmp_path / "run"),
        "n_updates": 2,
        "global_batch_size": 4,
        "per_device_batch_size": 4,
        "device": "cpu",
        "log_every": 1,
        "save_every": 2,
        "model": {
            "max_text_tokens": 12,
            "action_expert": {"hidden_size": 32, "intermediate_size": 64},
            "scene_state_weight": 0.5,
        },
        "optimizer": {"name": "adamw"},
        "schedule": {"kind": "cosine", "warmup_steps": 1, "total_steps": 2},
        "validation": {"every": 2, "batches": 1},
        "data": {
            "data_path": str(root),
            "mix": "metaworld",
            "shuffle_buffer": 20,
            "read_threads": 1,
            "transform_threads": 1,
            "statistics_dir": str(tmp_path / "stats"),
        },
    }
    metrics = Trainer(TrainConfig.from_dict(cfg)).run()
    assert metrics["val_scene_state_mse"] > 0 and np.isfinite(metrics["val_scene_state_mse"])
    policy = Policy.from_checkpoint(tmp_path / "run")
    assert policy.model.config.scene_state_dim == 6 and policy.model.scene_state_decoder.out_features == 6

    # Policy.scene_state: the readout in metres, the bounds normalization of the saved statistics undone
    from pg_vla.policy import Observation

    rng = np.random.default_rng(0)
    observations = [
        Observation(images={"primary": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)}, state=s, prompt="go")
        for s in rng.normal(size=(3, 4)).astype(np.float32)
    ]
    stats = policy.statistics.scene_state
    normalized = policy.model.predict_scene_state(**policy.prepare(observations)).numpy().astype(np.float64)
    expected = (np.clip(normalized, -1, 1) + 1) / 2 * (stats.p99 - stats.p01) + stats.p01
    np.testing.assert_allclose(policy.scene_state(observations), expected, rtol=0, atol=1e-9)

    # the readout benchmark on real first frames (structure only: this readout was trained on noise)
    pytest.importorskip("metaworld")
    from metaworld_subprocess import REPO, run_script

    proc = run_script(
        [
            str(REPO / "scripts/bench/scene_state_readout.py"),
            str(tmp_path / "run"),
            "--tasks",
            "reach-v3",
            "--seeds",
            "3",
        ]
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["seeds"] == [100000, 100002]
    reach = report["per_task"]["reach-v3"]
    assert set(reach) == {"object", "object_task_mean", "goal", "goal_task_mean"}
    assert all(0 <= v["within_radius"] <= 1 and v["median_error_m"] >= 0 for v in reach.values())


def test_position_errors_hand_checked():
    from pg_vla.eval.metrics import position_errors

    truth = np.zeros((4, 3))
    predicted = np.array([[0.03, 0.0, 0.0], [0.0, 0.0, 0.01], [0.1, 0.0, 0.0], [0.0, 0.06, 0.08]])  # .03 .01 .1 .1
    assert position_errors(predicted, truth, radius=0.05) == pytest.approx(
        {"median_error_m": 0.065, "within_radius": 0.5}
    )


def test_pi0_export_leaves_the_readout_out():
    from pg_vla.model.pi0_format import export_key, export_tensors

    cfg = PiZeroConfig.preset("tiny", scene_state_dim=3, scene_state_weight=1.0)
    state = PiZero(cfg).state_dict()
    exported = export_tensors(state, cfg)
    kept = [name for name in state if not name.startswith("scene_state_decoder.")]
    assert len(kept) == len(state) - 2  # weight and bias
    assert all(export_key(name) in exported for name in kept)
    assert not any("scene_state" in key for key in exported)
