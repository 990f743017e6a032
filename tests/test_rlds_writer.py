"""RLDS writing: the generic TFDS writer, the bridge/fractal schemas and the synthetic datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pg_vla.data.rlds import synthetic
from pg_vla.data.rlds.schemas import (
    BRIDGE_IMAGE_KEYS,
    BRIDGE_NAME,
    BRIDGE_VERSION,
    FRACTAL_NAME,
    FRACTAL_VERSION,
    bridge_features,
    fractal_features,
)
from pg_vla.data.rlds.writer import write_rlds_dataset
from rlds_features import feature_leaves

tfds = pytest.importorskip("tensorflow_datasets")

REPO = Path(__file__).resolve().parents[1]
REAL_BRIDGE = REPO.parent / "shared" / "data" / "bridge_debug" / BRIDGE_NAME / BRIDGE_VERSION

SMALL = dict(min_steps=4, max_steps=7, seed=3)
BRIDGE_SIZE = (40, 48)
FRACTAL_SIZE = (32, 40)
EPISODES = 5


def _episodes(builder, split: str) -> list[dict]:
    out = []
    for episode in tfds.as_numpy(builder.as_dataset(split=split)):
        episode = dict(episode)
        episode["steps"] = list(episode["steps"])
        out.append(episode)
    return out


def _assert_tree_equal(decoded, expected, path: str = "", jpeg_keys: tuple[str, ...] = ()) -> None:
    if isinstance(expected, dict):
        assert set(decoded) == set(expected), path
        for key in expected:
            _assert_tree_equal(decoded[key], expected[key], f"{path}/{key}", jpeg_keys)
    elif isinstance(expected, list):
        assert len(decoded) == len(expected), path
        for i, (d, e) in enumerate(zip(decoded, expected)):
            _assert_tree_equal(d, e, f"{path}[{i}]", jpeg_keys)
    elif isinstance(expected, str):
        assert decoded == expected.encode(), path
    elif path.rsplit("/", 1)[-1] in jpeg_keys:
        expected = np.asarray(expected)
        assert decoded.shape == expected.shape and decoded.dtype == np.uint8, path
        error = decoded.astype(np.float64) - expected.astype(np.float64)
        psnr = 10 * np.log10(255.0**2 / max(np.mean(error**2), 1e-12))
        assert np.abs(error).mean() < 4.0 and psnr > 25.0, (path, np.abs(error).mean(), psnr)
    else:
        np.testing.assert_array_equal(decoded, np.asarray(expected), err_msg=path)


# --------------------------------------------------------------------------------------------------
# schemas


def test_bridge_schema_matches_release():
    if not REAL_BRIDGE.is_dir():
        pytest.skip(f"real bridge debug dataset not found at {REAL_BRIDGE} (only on CI/dev machines)")
    real = tfds.builder_from_directory(str(REAL_BRIDGE)).info.features
    mine = bridge_features(image_size=(64, 64))
    assert feature_leaves(mine) == feature_leaves(real)
    assert repr(mine) == repr(real)  # includes descriptions
    # And the serialized schema is byte-for-byte the release's features.json content.
    from google.protobuf import json_format

    on_disk = json.loads((REAL_BRIDGE / "features.json").read_text())
    assert json.loads(json_format.MessageToJson(mine.to_proto())) == on_disk


def test_bridge_schema_image_size():
    leaves = feature_leaves(bridge_features())
    for key in BRIDGE_IMAGE_KEYS:
        assert leaves[f"steps/observation/{key}"] == ("Image", (256, 256, 3), "uint8", "jpeg")
    assert feature_leaves(bridge_features((128, 160)))["steps/observation/image_0"][1] == (128, 160, 3)


def test_fractal_schema():
    leaves = feature_leaves(fractal_features())
    assert leaves["steps/observation/image"] == ("Image", (256, 320, 3), "uint8", "jpeg")
    assert leaves["steps/observation/base_pose_tool_reached"] == ("Tensor", (7,), "float32", None)
    assert leaves["steps/observation/natural_language_instruction"] == ("Tensor", (), "object", None)
    assert leaves["steps/observation/natural_language_embedding"][1:3] == ((512,), "float32")
    assert leaves["steps/observation/orientation_box"][1] == (2, 3)
    assert leaves["steps/observation/workspace_bounds"][1] == (3, 3)
    assert leaves["steps/action/terminate_episode"] == ("Tensor", (3,), "int32", None)
    assert leaves["steps/action/gripper_closedness_action"][1:3] == ((1,), "float32")
    assert leaves["steps/reward"] == ("Scalar", (), "float32", None)
    assert leaves["steps/is_first"] == ("Tensor", (), "bool", None)
    assert "steps/discount" not in leaves
    assert not any(path.startswith("episode_metadata") for path in leaves)
    assert leaves["aspects/success"][2] == "bool" and leaves["attributes/env_name"][2] == "object"
    assert len([p for p in leaves if p.startswith("steps/observation/")]) == 14
    assert len([p for p in leaves if p.startswith("steps/action/")]) == 6
    assert feature_leaves(fractal_features((64, 80)))["steps/observation/image"][1] == (64, 80, 3)


# --------------------------------------------------------------------------------------------------
# generic writer


def _toy_features():
    f = tfds.features
    return f.FeaturesDict(
        {
            "steps": f.Dataset(
                {
                    "observation": f.FeaturesDict(
                        {
                            "image": f.Image(shape=(6, 5, 3), encoding_format="png"),
                            "state": f.Tensor(shape=(2,), dtype=np.float32),
                        }
                    ),
                    "action": f.Tensor(shape=(2,), dtype=np.float32),
                    "is_last": f.Scalar(dtype=np.bool_),
                    "language_instruction": f.Text(),
                }
            ),
            "episode_metadata": f.FeaturesDict({"episode_id": f.Scalar(dtype=np.int32)}),
        }
    )


def _toy_episode(split: str, index: int) -> dict:
    rng = np.random.default_rng([len(split), index])
    steps = [
        {
            "observation": {
                "image": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
                "state": rng.normal(size=2).astype(np.float32),
            },
            "action": rng.normal(size=2).astype(np.float32),
            "is_last": t == index % 3 + 1,
            "language_instruction": f"{split} task {index}",
        }
        for t in range(index % 3 + 2)
    ]
    return {"steps": steps, "episode_metadata": {"episode_id": index}}


def _toy_stream(split: str, n: int):
    for i in range(n):
        yield _toy_episode(split, i)


def _toy_splits(counts: dict[str, int]):
    return {split: _toy_stream(split, n) for split, n in counts.items()}


def test_writer_round_trip_png_and_shards(tmp_path):
    counts = {"train": 7, "val": 3}
    path = write_rlds_dataset(
        tmp_path, "toy_rlds", "1.2.0", _toy_features(), _toy_splits(counts), num_shards=3, description="toy"
    )
    assert path == tmp_path / "toy_rlds" / "1.2.0"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["dataset_info.json", "features.json"] + [
        f"toy_rlds-{split}.tfrecord-{k:05d}-of-00003" for split in ("train", "val") for k in range(3)
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy_rlds"]  # no downloads/ left behind

    builder = tfds.builder_from_directory(str(path))
    assert builder.info.name == "toy_rlds" and str(builder.info.version) == "1.2.0"
    for split, n in counts.items():
        info = builder.info.splits[split]
        assert info.num_examples == n and info.num_shards == 3 and sum(info.shard_lengths) == n
        # Each shard file is a plain TFRecord file holding shard_lengths[k] examples (per-rank file sharding).
        files = sorted(path.glob(f"toy_rlds-{split}.tfrecord-*"))
        import tensorflow as tf

        assert [sum(1 for _ in tf.data.TFRecordDataset(str(f))) for f in files] == list(info.shard_lengths)

        decoded = _episodes(builder, split)
        ids = [int(ep["episode_metadata"]["episode_id"]) for ep in decoded]
        assert sorted(ids) == list(range(n))
        for episode in decoded:
            _assert_tree_equal(episode, _toy_episode(split, int(episode["episode_metadata"]["episode_id"])))


def test_writer_keeps_order_without_shuffle(tmp_path):
    path = write_rlds_dataset(
        tmp_path, "toy_ordered", "0.1.0", _toy_features(), _toy_splits({"train": 6}), num_shards=2, shuffle=False
    )
    builder = tfds.builder_from_directory(str(path))
    ids = [int(ep["episode_metadata"]["episode_id"]) for ep in _episodes(builder, "train")]
    assert ids == list(range(6))


def test_writer_errors(tmp_path):
    features = _toy_features()
    write_rlds_dataset(tmp_path, "toy_once", "1.0.0", features, _toy_splits({"train": 2}))
    with pytest.raises(FileExistsError):
        write_rlds_dataset(tmp_path, "toy_once", "1.0.0", features, _toy_splits({"train": 2}))
    path = write_rlds_dataset(tmp_path, "toy_once", "1.0.0", features, _toy_splits({"train": 3}), overwrite=True)
    assert tfds.builder_from_directory(str(path)).info.splits["train"].num_examples == 3

    with pytest.raises(ValueError, match="num_shards"):
        write_rlds_dataset(tmp_path, "toy_small", "1.0.0", features, _toy_splits({"train": 2}), num_shards=3)
    assert not (tmp_path / "toy_small" / "1.0.0").exists()
    with pytest.raises(ValueError, match="num_shards"):
        write_rlds_dataset(tmp_path, "toy_list", "1.0.0", features, {"train": [_toy_episode("train", 0)]}, num_shards=2)
    no_steps = tfds.features.FeaturesDict({"x": tfds.features.Scalar(dtype=np.int32)})
    with pytest.raises(ValueError, match="steps"):
        write_rlds_dataset(tmp_path, "toy_bad", "1.0.0", no_steps, {"train": [{"x": 1}]})


# --------------------------------------------------------------------------------------------------
# synthetic bridge / fractal


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_rlds")
    synthetic.make_synthetic_bridge(
        root, episodes_per_split=EPISODES, image_size=BRIDGE_SIZE, num_shards=2, empty_language_fraction=0.4, **SMALL
    )
    synthetic.make_synthetic_fractal(
        root, episodes_per_split=EPISODES, image_size=FRACTAL_SIZE, num_shards=2, empty_language_fraction=0.2, **SMALL
    )
    return root


def _bridge_expected(split: str, index: int) -> dict:
    return synthetic.bridge_episode(split, index, image_size=BRIDGE_SIZE, empty_language_fraction=0.4, **SMALL)


def _fractal_expected(split: str, index: int) -> dict:
    return synthetic.fractal_episode(split, index, image_size=FRACTAL_SIZE, empty_language_fraction=0.2, **SMALL)


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_bridge_round_trip(synthetic_dir, split):
    builder = tfds.builder_from_directory(str(synthetic_dir / BRIDGE_NAME / BRIDGE_VERSION))
    assert feature_leaves(builder.info.features) == feature_leaves(bridge_features(BRIDGE_SIZE))
    info = builder.info.splits[split]
    assert info.num_examples == EPISODES and info.num_shards == 2
    decoded = _episodes(builder, split)
    assert sorted(int(ep["episode_metadata"]["episode_id"]) for ep in decoded) == list(range(EPISODES))
    for episode in decoded:
        expected = _bridge_expected(split, int(episode["episode_metadata"]["episode_id"]))
        assert len(episode["steps"]) == len(expected["steps"])
        assert SMALL["min_steps"] <= len(episode["steps"]) <= SMALL["max_steps"]
        _assert_tree_equal(episode, expected, jpeg_keys=BRIDGE_IMAGE_KEYS)
        for k, key in enumerate(BRIDGE_IMAGE_KEYS):  # absent cameras are all-zero, present ones are not
            present = bool(episode["episode_metadata"][f"has_image_{k}"])
            assert all((step["observation"][key].max() > 0) == present for step in episode["steps"])


def test_synthetic_bridge_is_plausible():
    unlabeled, in_between = 0, 0
    for index in range(12):
        episode = synthetic.bridge_episode("train", index, image_size=(24, 24), seed=5)
        steps = episode["steps"]
        state = np.stack([s["observation"]["state"] for s in steps])
        action = np.stack([s["action"] for s in steps])
        assert state.dtype == np.float32 and action.shape == (len(steps), 7)
        # The state integrates the actions (xyz, rpy) up to small noise.
        np.testing.assert_allclose(state[1:, :6], state[:-1, :6] + action[:-1, :6], atol=5e-3)
        # Gripper: action in [0, 1] (1 open), starts open, closes; state opening follows.
        assert action[:, 6].min() >= 0 and action[:, 6].max() <= 1 and action[0, 6] == 1 and action[:, 6].min() == 0
        in_between += int(np.sum((action[:, 6] > 0.05) & (action[:, 6] < 0.95)))
        assert state[0, 6] > 0.95 and state[:, 6].min() < 0.5
        assert [s["is_first"] for s in steps] == [True] + [False] * (len(steps) - 1)
        assert [s["is_last"] for s in steps] == [False] * (len(steps) - 1) + [True]
        # Images change as the robot moves.
        assert not np.array_equal(steps[0]["observation"]["image_0"], steps[-1]["observation"]["image_0"])
        instruction = steps[0]["language_instruction"]
        assert episode["episode_metadata"]["has_language"] == bool(instruction)
        assert all(s["language_instruction"] == instruction for s in steps)
        if not instruction:
            unlabeled += 1
            assert not steps[0]["language_embedding"].any()
        else:
            assert instruction in synthetic.BRIDGE_INSTRUCTIONS
            assert abs(np.linalg.norm(steps[0]["language_embedding"]) - 1) < 1e-5
    assert unlabeled == 3  # default fraction 0.25 of 12 episodes
    assert in_between >= 12


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_fractal_round_trip(synthetic_dir, split):
    path = synthetic_dir / FRACTAL_NAME / FRACTAL_VERSION
    assert sorted(p.name for p in path.glob(f"*-{split}.tfrecord-*")) == [
        f"{FRACTAL_NAME}-{split}.tfrecord-0000{k}-of-00002" for k in range(2)
    ]
    builder = tfds.builder_from_directory(str(path))
    assert feature_leaves(builder.info.features) == feature_leaves(fractal_features(FRACTAL_SIZE))
    assert builder.info.splits[split].num_examples == EPISODES
    decoded = _episodes(builder, split)
    expected = [_fractal_expected(split, i) for i in range(EPISODES)]
    matched = set()
    for episode in decoded:  # no episode id in this schema: match on the first pose
        first = episode["steps"][0]["observation"]["base_pose_tool_reached"]
        index = next(
            i
            for i, e in enumerate(expected)
            if np.array_equal(e["steps"][0]["observation"]["base_pose_tool_reached"], first)
        )
        matched.add(index)
        _assert_tree_equal(episode, expected[index], jpeg_keys=("image",))
        quats = np.stack([s["observation"]["base_pose_tool_reached"][3:] for s in episode["steps"]])
        np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-5)
    assert matched == set(range(EPISODES))


def test_synthetic_fractal_is_plausible():
    starts_with_zero = unlabeled = 0
    for index in range(16):
        episode = synthetic.fractal_episode("train", index, image_size=(16, 20), seed=1, empty_language_fraction=0.25)
        steps = episode["steps"]
        n = len(steps)
        pose = np.stack([s["observation"]["base_pose_tool_reached"] for s in steps])
        np.testing.assert_allclose(np.linalg.norm(pose[:, 3:], axis=1), 1.0, atol=1e-6)
        world = np.stack([s["action"]["world_vector"] for s in steps])
        np.testing.assert_allclose(pose[1:, :3], pose[:-1, :3] + world[:-1], atol=6e-3)
        terminate = np.stack([s["action"]["terminate_episode"] for s in steps])
        assert terminate.dtype == np.int32
        assert (terminate[:-1] == [0, 1, 0]).all() and (terminate[-1] == [1, 0, 0]).all()
        command = np.array([s["action"]["gripper_closedness_action"][0] for s in steps])
        closed = np.array([s["observation"]["gripper_closed"][0] for s in steps])
        assert set(np.unique(command)) <= {-1.0, 0.0, 1.0} and (command == 1).any() and (command == 0).sum() >= n // 2
        assert closed[0] == 0
        for t in range(n - 1):  # the closed state follows the relative commands
            want = 1.0 if command[t] > 0 else 0.0 if command[t] < 0 else closed[t]
            assert closed[t + 1] == want
        starts_with_zero += int(command[0] == 0)
        assert (
            not steps[0]["observation"]["natural_language_instruction"]
            or steps[0]["observation"]["natural_language_instruction"] in synthetic.FRACTAL_INSTRUCTIONS
        )
        unlabeled += int(steps[0]["observation"]["natural_language_instruction"] == "")
        assert not np.array_equal(steps[0]["observation"]["image"], steps[-1]["observation"]["image"])
        assert set(episode) == {"steps", "aspects", "attributes"}
    assert starts_with_zero >= 8
    assert unlabeled == 4


def test_synthetic_is_deterministic():
    a = synthetic.fractal_episode("val", 2, image_size=(16, 16), seed=7)
    b = synthetic.fractal_episode("val", 2, image_size=(16, 16), seed=7)
    c = synthetic.fractal_episode("val", 2, image_size=(16, 16), seed=8)
    for step_a, step_b in zip(a["steps"], b["steps"]):
        np.testing.assert_array_equal(step_a["observation"]["image"], step_b["observation"]["image"])
        np.testing.assert_array_equal(
            step_a["observation"]["base_pose_tool_reached"], step_b["observation"]["base_pose_tool_reached"]
        )
    assert not np.array_equal(
        a["steps"][0]["observation"]["base_pose_tool_reached"], c["steps"][0]["observation"]["base_pose_tool_reached"]
    )


def test_script_end_to_end(tmp_path):
    script = REPO / "scripts" / "data" / "make_synthetic_rlds.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--output_dir",
            str(tmp_path),
            "--episodes_per_split",
            "2",
            "--steps",
            "3",
            "4",
            "--image_size",
            "16",
            "20",
            "--num_shards",
            "2",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name, version in ((BRIDGE_NAME, BRIDGE_VERSION), (FRACTAL_NAME, FRACTAL_VERSION)):
        path = tmp_path / name / version
        builder = tfds.builder_from_directory(str(path))
        for split in ("train", "val"):
            assert builder.info.splits[split].num_examples == 2 and builder.info.splits[split].num_shards == 2
            assert (path / f"{name}-{split}.tfrecord-00001-of-00002").is_file()
        episode = _episodes(builder, "train")[0]
        assert 3 <= len(episode["steps"]) <= 4
        image = episode["steps"][0]["observation"]["image_0" if name == BRIDGE_NAME else "image"]
        assert image.shape == (16, 20, 3)


def test_imports_do_not_load_tensorflow():
    code = (
        "import sys, pg_vla.data, pg_vla.data.rlds, pg_vla.data.rlds.schemas, pg_vla.data.rlds.writer, "
        "pg_vla.data.rlds.synthetic; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
