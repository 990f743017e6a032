"""The RLDS input pipeline against an independent numpy reference built from the raw TFDS steps.

The reference (`_raw_reference`) reads every episode with `tfds.builder_from_directory(...).as_dataset`
and applies the bridge / fractal conventions of the spec in plain numpy, without the project's
standardization code. Statistics, normalized windows (chunks, history, padding, masks), images,
sharding over ranks, mixing, the statistics cache, errors, the torch loader and the CLI are all
checked against it or against hand-written expectations.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pg_vla.data.normalization import DatasetStatistics, Normalizer
from pg_vla.data.rlds import dataset_configs
from pg_vla.data.rlds.config import RLDSConfig
from pg_vla.data.rlds.statistics import load_or_compute_statistics
from pg_vla.data.rlds.synthetic import make_synthetic_bridge, make_synthetic_fractal

# TensorFlow (and the modules that import it) are loaded when these tests run, not when pytest collects
# this file: loaded before triton / bitsandbytes, tensorflow makes the process abort (LLVM option clash),
# and other test modules may load those after collection.
tf = tfds = pipeline = standardize = None


@pytest.fixture(scope="module", autouse=True)
def _tensorflow_modules():
    global tf, tfds, pipeline, standardize
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from pg_vla.data.rlds import pipeline as pipeline_module
    from pg_vla.data.rlds import standardize as standardize_module

    pipeline, standardize = pipeline_module, standardize_module


REPO = Path(__file__).resolve().parents[1]
REAL_BRIDGE_ROOT = REPO / ".." / "shared" / "data" / "bridge_debug"
BRIDGE = "bridge_dataset"
FRACTAL = "fractal20220817_data"

SYNTH_EPISODES = 5  # odd, over 2 shards: uneven rank shares
SYNTH_IMAGE = 32  # synthetic images are SYNTH_IMAGE x SYNTH_IMAGE (no resize when image_size matches)
REAL_IMAGE = 64  # the debug bridge subset is 64x64
# Synthetic bridge: with the default empty-language fraction 0.25, episode index 3 of 5 is unlabeled.
SYNTH_UNLABELED = 1


def _quiet_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


# --------------------------------------------------------------------------------------------------
# numpy reference of the conventions


def ref_binarize(gripper: np.ndarray) -> np.ndarray:
    """> 0.95 open (1), < 0.05 closed (0); in between: next decided value; trailing run: last raw value."""
    out = np.empty(len(gripper), np.float64)
    carry = float(gripper[-1])
    for i in range(len(gripper) - 1, -1, -1):
        if gripper[i] > 0.95:
            carry = 1.0
        elif gripper[i] < 0.05:
            carry = 0.0
        out[i] = carry
    return out


def ref_relative_to_absolute(gripper: np.ndarray) -> np.ndarray:
    """> 0.1 close (0), < -0.1 open (1), else keep; before the first command: its opposite (open if none)."""
    commands = [g for g in gripper if abs(g) > 0.1]
    state = 1.0 if not commands or commands[0] > 0.1 else 0.0
    out = []
    for g in gripper:
        if g > 0.1:
            state = 0.0
        elif g < -0.1:
            state = 1.0
        out.append(state)
    return np.asarray(out, np.float64)


@dataclasses.dataclass
class RefEpisode:
    proprio: np.ndarray  # (T, P) float32, standardized
    action: np.ndarray  # (T, 7) float32, standardized
    language: str
    image: np.ndarray  # (T, h, w, 3) uint8, primary camera
    raw: dict  # extra raw arrays (fractal: gripper_closed over all raw steps)


@functools.cache
def _raw_reference(root: str, name: str, split: str) -> dict[str, RefEpisode]:
    """tfds_id -> standardized episode, from the raw TFDS steps (no project code)."""
    cfg = dataset_configs.DATASET_CONFIGS[name]
    builder = tfds.builder_from_directory(str(Path(root) / cfg.name / cfg.version))
    ds = builder.as_dataset(split=split, read_config=tfds.ReadConfig(add_tfds_id=True))
    out = {}
    for episode in tfds.as_numpy(ds):
        steps = list(episode["steps"])
        tfds_id = episode["tfds_id"].decode()
        if name == BRIDGE:
            state = np.stack([s["observation"]["state"] for s in steps]).astype(np.float32)
            gripper = ref_binarize(np.stack([s["action"] for s in steps])[:, 6])
            movement = state[1:, :6] - state[:-1, :6]
            action = np.concatenate([movement, gripper[:-1, None].astype(np.float32)], axis=1)
            out[tfds_id] = RefEpisode(
                proprio=state[:-1],
                action=action,
                language=steps[0]["language_instruction"].decode(),
                image=np.stack([s["observation"]["image_0"] for s in steps])[:-1],
                raw={"state": state, "image_1": np.stack([s["observation"]["image_1"] for s in steps])[:-1]},
            )
        else:
            obs = [s["observation"] for s in steps]
            pose = np.stack([o["base_pose_tool_reached"] for o in obs]).astype(np.float32)
            closed = np.stack([o["gripper_closed"] for o in obs]).astype(np.float32)
            act = [s["action"] for s in steps]
            gripper = ref_relative_to_absolute(np.stack([a["gripper_closedness_action"][0] for a in act]))
            action = np.concatenate(
                [
                    np.stack([a["world_vector"] for a in act]),
                    np.stack([a["rotation_delta"] for a in act]),
                    gripper[:, None],
                ],
                axis=1,
            ).astype(np.float32)
            language = obs[0]["natural_language_instruction"]
            out[tfds_id] = RefEpisode(
                proprio=np.concatenate([pose, closed], axis=1),
                action=action,
                language=language.decode() if isinstance(language, bytes) else str(language),
                image=np.stack([o["image"] for o in obs]),
                raw={"pose": pose, "closed": closed[:, 0]},
            )
    return out


def reference(root, name: str, split: str = "train", skip_unlabeled: bool = True) -> dict[str, RefEpisode]:
    episodes = _raw_reference(str(root), name, split)
    return {k: e for k, e in episodes.items() if len(e.action) > 0 and (e.language or not skip_unlabeled)}


def ref_statistics(episodes: dict[str, RefEpisode]) -> dict:
    def stats(values: np.ndarray) -> dict[str, np.ndarray]:
        v = values.astype(np.float64)
        return {
            "mean": v.mean(0),
            "std": v.std(0),
            "min": v.min(0),
            "max": v.max(0),
            "p01": np.quantile(v, 0.01, axis=0),
            "p99": np.quantile(v, 0.99, axis=0),
        }

    eps = list(episodes.values())
    action = np.concatenate([e.action for e in eps])
    return {
        "action": stats(action),
        "proprio": stats(np.concatenate([e.proprio for e in eps])),
        "num_transitions": len(action),
        "num_trajectories": len(eps),
    }


def ref_bounds(x: np.ndarray, st: dict, mask: np.ndarray) -> np.ndarray:
    low, high = st["p01"], st["p99"]
    width = high - low
    degenerate = width < 1e-8
    y = np.clip(2.0 * (x - low) / np.where(degenerate, 1.0, width) - 1.0, -1.0, 1.0)
    y = np.where(degenerate, 0.0, y)
    return np.where(mask, y, x)


# --------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """Synthetic bridge and fractal datasets side by side: 5 episodes per split in 2 shards, 32x32."""
    root = tmp_path_factory.mktemp("rlds_synthetic")
    common = dict(
        episodes_per_split=SYNTH_EPISODES,
        splits=("train", "val"),
        min_steps=4,
        max_steps=8,
        image_size=(SYNTH_IMAGE, SYNTH_IMAGE),
        num_shards=2,
        seed=1,
    )
    make_synthetic_bridge(root, **common)
    make_synthetic_fractal(root, **common)
    return root


@pytest.fixture(scope="module")
def real_root() -> Path:
    folder = REAL_BRIDGE_ROOT / BRIDGE / "1.0.0"
    if not (folder / "dataset_info.json").is_file():
        pytest.skip(f"real BridgeData V2 debug subset not found at {folder.resolve()} (CI/dev-only data)")
    return REAL_BRIDGE_ROOT.resolve()


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rlds_statistics")


@pytest.fixture
def root_for(request, synth_root):
    def get(source: str) -> Path:
        return request.getfixturevalue("real_root") if source == "real" else synth_root

    return get


def config(root, mix: str, stats_dir, **kwargs) -> RLDSConfig:
    base = dict(
        data_path=str(root),
        mix=mix,
        train=False,
        image_size=SYNTH_IMAGE,
        cond_steps=3,
        horizon_steps=4,
        batch_size=64,
        shuffle_buffer=64,
        read_threads=1,
        transform_threads=1,
        statistics_dir=str(stats_dir),
        camera_roles=("primary",),
    )
    base.update(kwargs)
    return RLDSConfig(**base)


def collect(cfg: RLDSConfig, rank: int = 0, world_size: int = 1, max_batches: int | None = None):
    """All batches (or the first `max_batches`) concatenated, and the MixInfo."""
    ds, info = pipeline.make_dataset(cfg, rank, world_size)
    batches = []
    for batch in ds:
        batches.append(pipeline.to_numpy_batch(batch))
        if max_batches is not None and len(batches) >= max_batches:
            break
    assert batches, "the pipeline yielded no batch"
    merged = {}
    for key, value in batches[0].items():
        if isinstance(value, list):
            merged[key] = [x for b in batches for x in b[key]]
        else:
            merged[key] = np.concatenate([b[key] for b in batches])
    return merged, info


def load_stats(root, name: str, stats_dir, skip_unlabeled: bool = True, split: str = "train"):
    return load_or_compute_statistics(
        root,
        dataset_configs.DATASET_CONFIGS[name],
        split=split,
        skip_unlabeled=skip_unlabeled,
        statistics_dir=stats_dir,
        read_threads=1,
    )


def assert_statistics_equal(stats: DatasetStatistics, ref: dict, atol: float = 1e-5) -> None:
    assert stats.num_transitions == ref["num_transitions"]
    assert stats.num_trajectories == ref["num_trajectories"]
    for kind in ("action", "proprio"):
        for key in ("mean", "std", "min", "max", "p01", "p99"):
            np.testing.assert_allclose(
                getattr(getattr(stats, kind), key), ref[kind][key], rtol=1e-5, atol=atol, err_msg=f"{kind}/{key}"
            )


# --------------------------------------------------------------------------------------------------
# gripper conventions, hand-checked


@pytest.mark.parametrize(
    "commands, expected",
    [
        ([0, 0, 1, 0, 0, -1, 0], [1, 1, 0, 0, 0, 1, 1]),  # first command closes: open before it
        ([0, -1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]),  # first command opens: closed before it
        ([-1, -1, 0, 1], [1, 1, 1, 0]),  # command on the first step
        ([0, 0, 0], [1, 1, 1]),  # no command at all: open
        ([1.0], [0]),
        ([0.05, -0.05, 0.2, 0.1, -0.1, -0.15, 0.0], [1, 1, 0, 0, 0, 1, 1]),  # |x| <= 0.1 is no command
        ([0.0, 0.1, -0.1, -0.11, 0.11], [0, 0, 0, 1, 0]),  # first command (-0.11) opens: closed before it
    ],
)
def test_relative_to_absolute_gripper_hand_checked(commands, expected):
    got = standardize.relative_to_absolute_gripper(tf.constant(commands, tf.float32)).numpy()
    np.testing.assert_array_equal(got, np.asarray(expected, np.float32))
    np.testing.assert_array_equal(ref_relative_to_absolute(np.asarray(commands, np.float32)), expected)


@pytest.mark.parametrize(
    "gripper, expected",
    [
        ([1, 1, 0.5, 0, 0, 0.6, 1, 1], [1, 1, 0, 0, 0, 1, 1, 1]),  # in between: next decided value
        ([1, 0.7, 0.3, 0.2, 0], [1, 0, 0, 0, 0]),  # a run of in-between values
        ([0.96, 0.95, 0.05, 0.04], [1, 0, 0, 0]),  # thresholds are strict
        ([0.0, 0.97], [0, 1]),
        ([1, 0.5, 0.4], [1, 0.4, 0.4]),  # trailing undecided run keeps the last raw value
        ([0.5, 0.3], [0.3, 0.3]),
    ],
)
def test_binarize_gripper_actions_hand_checked(gripper, expected):
    got = standardize.binarize_gripper_actions(tf.constant(gripper, tf.float32)).numpy()
    np.testing.assert_allclose(got, np.asarray(expected, np.float32), rtol=0, atol=1e-7)
    np.testing.assert_allclose(ref_binarize(np.asarray(gripper, np.float32)), expected, rtol=0, atol=1e-7)


def test_gripper_conversions_match_reference_on_random_sequences():
    rng = np.random.default_rng(0)
    levels = np.array([-1.0, -0.5, -0.1, -0.05, 0.0, 0.0, 0.0, 0.05, 0.1, 0.5, 1.0], np.float32)
    grip_levels = np.array([0.0, 0.04, 0.05, 0.3, 0.5, 0.95, 0.96, 1.0], np.float32)
    for _ in range(30):
        n = int(rng.integers(1, 15))
        rel = rng.choice(levels, n)
        np.testing.assert_array_equal(
            standardize.relative_to_absolute_gripper(tf.constant(rel)).numpy(),
            ref_relative_to_absolute(rel),
            err_msg=str(rel),
        )
        cont = rng.choice(grip_levels, n)
        np.testing.assert_array_equal(
            standardize.binarize_gripper_actions(tf.constant(cont)).numpy(),
            ref_binarize(cont).astype(np.float32),
            err_msg=str(cont),
        )


# --------------------------------------------------------------------------------------------------
# statistics and batches against the raw steps

SOURCES = [
    pytest.param("real", BRIDGE, id="real_bridge"),
    pytest.param("synthetic", BRIDGE, id="synthetic_bridge"),
    pytest.param("synthetic", FRACTAL, id="synthetic_fractal"),
]


@pytest.mark.parametrize("source, name", SOURCES)
def test_statistics_match_numpy_reference(root_for, stats_dir, source, name):
    root = root_for(source)
    stats, path = load_stats(root, name, stats_dir)
    assert path.is_file() and path.parent == Path(stats_dir)
    ref = ref_statistics(reference(root, name))
    assert_statistics_equal(stats, ref)
    assert_statistics_equal(DatasetStatistics.load(path), ref)  # what the file holds
    assert stats.action.dim == 7 and stats.proprio.dim == (7 if name == BRIDGE else 8)


@pytest.mark.parametrize("source, name", SOURCES)
def test_batches_match_raw_steps(root_for, stats_dir, source, name):
    """Every frame of a deterministic pass: chunks, history, padding, masks, images, language."""
    root = root_for(source)
    cond, horizon = 3, 4
    image_size = REAL_IMAGE if source == "real" else SYNTH_IMAGE
    mix = "bridge" if name == BRIDGE else "fractal"
    batch, info = collect(
        config(root, mix, stats_dir, image_size=image_size, cond_steps=cond, horizon_steps=horizon, batch_size=50)
    )
    episodes = reference(root, name)
    ref = ref_statistics(episodes)
    stats = info.statistics[name]
    assert_statistics_equal(stats, ref)
    action_mask = np.array([True] * 6 + [False])
    proprio_dim = 7 if name == BRIDGE else 8
    unnorm_action = Normalizer(stats.action, "bounds", list(action_mask)).unnormalize(batch["actions"])
    unnorm_proprio = Normalizer(stats.proprio, "bounds").unnormalize(batch["proprio"])

    n = len(batch["step"])
    assert batch["actions"].shape == (n, horizon, 7) and batch["proprio"].shape == (n, cond, proprio_dim)
    seen = []
    for i in range(n):
        tfds_id, t = batch["tfds_id"][i], int(batch["step"][i])
        ep = episodes[tfds_id]
        length = len(ep.action)
        assert 0 <= t < length
        seen.append((tfds_id, t))
        assert batch["language"][i] == ep.language
        assert batch["dataset_index"][i] == 0
        # image history t-C+1 .. t (one camera): frame-major, the first frame repeated before the start, masked
        history = t - cond + 1 + np.arange(cond)
        np.testing.assert_array_equal(
            batch["images"][i], ep.image[np.maximum(history, 0)], err_msg=f"{tfds_id} step {t} images"
        )
        np.testing.assert_array_equal(batch["image_mask"][i], history >= 0)

        # action chunk t .. t+H-1, past the end: the last action repeated, mask False
        chunk = t + np.arange(horizon)
        raw_action = ep.action[np.minimum(chunk, length - 1)].astype(np.float64)
        np.testing.assert_array_equal(batch["action_mask"][i], chunk < length)
        np.testing.assert_allclose(
            batch["actions"][i],
            ref_bounds(raw_action, ref["action"], action_mask),
            rtol=0,
            atol=2e-5,
            err_msg=f"{tfds_id} step {t} actions",
        )
        # proprio history t-C+1 .. t, oldest first; before the start: the first step, mask False
        raw_proprio = ep.proprio[np.maximum(history, 0)].astype(np.float64)
        np.testing.assert_array_equal(batch["proprio_mask"][i], history >= 0)
        np.testing.assert_allclose(
            batch["proprio"][i],
            ref_bounds(raw_proprio, ref["proprio"], True),
            rtol=0,
            atol=2e-5,
            err_msg=f"{tfds_id} step {t} proprio",
        )

        # de-normalized with the project's statistics: the raw values where they were not clipped
        for got, raw, st, mask in (
            (unnorm_action[i], raw_action, stats.action, action_mask),
            (unnorm_proprio[i], raw_proprio, stats.proprio, np.ones(proprio_dim, bool)),
        ):
            mask = np.broadcast_to(mask, raw.shape)
            inside = (raw >= st.p01) & (raw <= st.p99)
            np.testing.assert_allclose(got[inside & mask], raw[inside & mask], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got[~mask], raw[~mask])  # the gripper action stays raw
        clipped_high = (raw_action > stats.action.p99) & action_mask
        clipped_low = (raw_action < stats.action.p01) & action_mask
        assert np.all(batch["actions"][i][clipped_high] == 1.0) and np.all(batch["actions"][i][clipped_low] == -1.0)
        clipped_high = raw_proprio > stats.proprio.p99
        clipped_low = raw_proprio < stats.proprio.p01
        assert np.all(batch["proprio"][i][clipped_high] == 1.0) and np.all(batch["proprio"][i][clipped_low] == -1.0)

        if t == length - 1:  # explicit end-of-episode padding: the last action repeated
            np.testing.assert_array_equal(batch["action_mask"][i], [True] + [False] * (horizon - 1))
            assert np.all(batch["actions"][i] == batch["actions"][i][0])
        if t == 0:  # explicit start-of-episode padding: the first proprio repeated
            np.testing.assert_array_equal(batch["proprio_mask"][i], [False] * (cond - 1) + [True])
            assert np.all(batch["proprio"][i] == batch["proprio"][i][-1])

    # one ordered pass: every standardized step exactly once
    assert len(seen) == len(set(seen))
    assert set(seen) == {(k, t) for k, e in episodes.items() for t in range(len(e.action))}
    assert (~batch["action_mask"]).any() and (~batch["proprio_mask"]).any()
    some_clipped = (np.abs(batch["actions"][..., :6]) == 1.0).any()
    assert some_clipped, "no clipped action value: the clipping check was vacuous"


def test_train_batch_shapes_dtypes_ranges(real_root, stats_dir):
    cfg = config(
        real_root,
        "bridge",
        stats_dir,
        train=True,
        image_size=32,
        cond_steps=2,
        horizon_steps=4,
        batch_size=16,
        shuffle_buffer=32,
        camera_roles=("primary", "secondary", "wrist"),
    )
    batch, info = collect(cfg, max_batches=1)
    episodes = reference(real_root, BRIDGE)
    b = 16
    expected = {
        "images": ((b, 2 * 3, 32, 32, 3), np.uint8),  # C = 2 frames x N = 3 cameras, frame-major
        "image_mask": ((b, 2 * 3), np.bool_),
        "proprio": ((b, 2, 7), np.float32),
        "proprio_mask": ((b, 2), np.bool_),
        "actions": ((b, 4, 7), np.float32),
        "action_mask": ((b, 4), np.bool_),
        "step": ((b,), np.int32),
        "dataset_index": ((b,), np.int32),
    }
    assert set(batch) == set(expected) | {"language", "tfds_id"}
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert len(batch["language"]) == b and all(isinstance(s, str) and s for s in batch["language"])
    assert len(batch["tfds_id"]) == b and all(k in episodes for k in batch["tfds_id"])
    assert all(0 <= s < len(episodes[k].action) for k, s in zip(batch["tfds_id"], batch["step"]))
    assert np.all(np.abs(batch["proprio"]) <= 1.0) and np.all(np.abs(batch["actions"][..., :6]) <= 1.0)
    assert set(np.unique(batch["actions"][..., 6])) <= {0.0, 1.0}
    assert batch["proprio_mask"][:, -1].all() and batch["action_mask"][:, 0].all()
    views = batch["image_mask"].reshape(b, 2, 3)  # (B, C, N)
    assert views[:, -1, :2].all() and not views[..., 2].any()  # bridge has no wrist camera, in any frame
    np.testing.assert_array_equal(views[:, 0, :2], np.repeat(batch["proprio_mask"][:, :1], 2, axis=1))
    assert (batch["dataset_index"] == 0).all()
    assert info.datasets == [BRIDGE] and info.proprio_dim == 7 and info.action_dim == 7


@pytest.mark.parametrize("normalization", ["bounds", "gaussian", "mean_std", "quantile"])
def test_normalization_options(synth_root, stats_dir, normalization):
    """normalize_gripper=True normalizes the gripper action too; mean_std (= gaussian) is (x - mean) / (std + 1e-6)
    and quantile 2 (x - p01) / (p99 - p01 + 1e-6) - 1, both unclipped (openpi's pi0 and pi0.5)."""
    batch, _ = collect(
        config(
            synth_root,
            "bridge",
            stats_dir,
            normalization=normalization,
            normalize_gripper=True,
            cond_steps=1,
            horizon_steps=1,
        )
    )
    episodes = reference(synth_root, BRIDGE)
    ref = ref_statistics(episodes)
    raw_action = np.stack([episodes[k].action[t] for k, t in zip(batch["tfds_id"], batch["step"])])
    raw_proprio = np.stack([episodes[k].proprio[t] for k, t in zip(batch["tfds_id"], batch["step"])])
    for got, raw, st in (
        (batch["actions"][:, 0], raw_action, ref["action"]),
        (batch["proprio"][:, 0], raw_proprio, ref["proprio"]),
    ):
        raw = raw.astype(np.float64)
        if normalization == "bounds":
            expected = ref_bounds(raw, st, True)
        elif normalization == "quantile":
            expected = 2 * (raw - st["p01"]) / (st["p99"] - st["p01"] + 1e-6) - 1
        else:
            expected = (raw - st["mean"]) / (st["std"] + 1e-6)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)
    if normalization == "bounds":  # synthetic gripper actions are 0/1: p01 = 0, p99 = 1
        assert set(np.unique(batch["actions"][:, 0, 6])) == {-1.0, 1.0}


@pytest.mark.parametrize("train", [False, True])
def test_absent_camera_is_black(synth_root, stats_dir, train):
    cfg = config(
        synth_root,
        "bridge",
        stats_dir,
        train=train,
        camera_roles=("primary", "wrist"),
        batch_size=16,
        shuffle_buffer=16,
    )
    batch, _ = collect(cfg, max_batches=1)
    images = batch["images"].reshape(len(batch["step"]), cfg.cond_steps, 2, *batch["images"].shape[2:])
    mask = batch["image_mask"].reshape(len(batch["step"]), cfg.cond_steps, 2)  # (B, C, N)
    np.testing.assert_array_equal(mask[..., 0], batch["proprio_mask"])  # masked only before the start
    assert not mask[..., 1].any() and images[:, :, 0].any()
    assert not images[:, :, 1].any(), "an absent camera's frame is not black"


def test_image_history_of_several_cameras_against_raw_frames(synth_root, stats_dir):
    """C = 3 frames x (primary, wrist, secondary), frame-major; wrist absent (black, masked) in every frame,
    the views before the episode start the first frame repeated and masked."""
    roles, cond = ("primary", "wrist", "secondary"), 3
    batch, _ = collect(config(synth_root, "bridge", stats_dir, camera_roles=roles, cond_steps=cond, batch_size=64))
    episodes = reference(synth_root, BRIDGE)
    n = len(batch["step"])
    assert batch["images"].shape == (n, cond * len(roles), SYNTH_IMAGE, SYNTH_IMAGE, 3)
    assert batch["image_mask"].shape == (n, cond * len(roles))
    starts = 0
    for i, (tfds_id, t) in enumerate(zip(batch["tfds_id"], batch["step"])):
        ep = episodes[tfds_id]
        history = int(t) - cond + 1 + np.arange(cond)
        past = np.maximum(history, 0)
        black = np.zeros_like(ep.image[past])
        expected = np.stack([ep.image[past], black, ep.raw["image_1"][past]], axis=1)  # (C, N, S, S, 3)
        np.testing.assert_array_equal(batch["images"][i], expected.reshape(-1, *expected.shape[2:]), err_msg=tfds_id)
        expected_mask = (history >= 0)[:, None] & np.array([True, False, True])[None, :]  # (C, N)
        np.testing.assert_array_equal(batch["image_mask"][i], expected_mask.reshape(-1))
        starts += int(t) < cond - 1
    assert starts > 0, "no sample near an episode start: the start-of-episode mask was not exercised"


def test_one_cond_step_gives_the_current_frame_only(synth_root, stats_dir):
    roles = ("primary", "secondary")
    batch, _ = collect(config(synth_root, "bridge", stats_dir, camera_roles=roles, cond_steps=1))
    episodes = reference(synth_root, BRIDGE)
    assert batch["images"].shape[1:] == (2, SYNTH_IMAGE, SYNTH_IMAGE, 3) and batch["image_mask"].all()
    for i, (tfds_id, t) in enumerate(zip(batch["tfds_id"], batch["step"])):
        np.testing.assert_array_equal(batch["images"][i, 0], episodes[tfds_id].image[t])
        np.testing.assert_array_equal(batch["images"][i, 1], episodes[tfds_id].raw["image_1"][t])


def test_augmentation_is_the_same_across_a_cameras_history(synth_root, stats_dir):
    """Training: the C frames of one camera share their crop and colour jitter, so the padded views at an
    episode start (the same raw frame repeated) stay identical; other samples of that frame differ."""
    cond = 3
    cfg = config(
        synth_root,
        "bridge",
        stats_dir,
        train=True,
        deterministic=True,
        camera_roles=("primary", "secondary"),
        cond_steps=cond,
        batch_size=32,
        shuffle_buffer=8,
    )
    batch, _ = collect(cfg, max_batches=3)
    images = batch["images"].reshape(len(batch["step"]), cond, 2, *batch["images"].shape[2:])  # (B, C, N, S, S, 3)
    episodes = reference(synth_root, BRIDGE)
    at_start = [i for i, t in enumerate(batch["step"]) if t == 0]
    assert at_start, "no episode start sampled"
    augmented = 0
    for i in at_start:
        for c in range(1, cond):
            np.testing.assert_array_equal(images[i, c], images[i, 0])  # same augmentation on every frame
        augmented += not np.array_equal(images[i, -1, 0], episodes[batch["tfds_id"][i]].image[0])
    assert augmented, "augmentation left every frame unchanged: the check was vacuous"


def test_fractal_quaternion_and_gripper_conventions(synth_root, stats_dir):
    batch, info = collect(config(synth_root, "fractal", stats_dir, cond_steps=1, horizon_steps=1))
    episodes = reference(synth_root, FRACTAL)
    stats = info.statistics[FRACTAL]
    proprio = Normalizer(stats.proprio, "bounds").unnormalize(batch["proprio"][:, 0])
    gripper_action = batch["actions"][:, 0, 6]
    assert set(np.unique(gripper_action)) <= {0.0, 1.0}
    saw_close = saw_open_before_close = False
    for i, (tfds_id, t) in enumerate(zip(batch["tfds_id"], batch["step"])):
        ep = episodes[tfds_id]
        pose, closed = ep.raw["pose"][t], ep.raw["closed"]
        inside = (pose >= stats.proprio.p01[:7]) & (pose <= stats.proprio.p99[:7])
        # xyz then quaternion xyzw, in base_pose_tool_reached's order, then gripper_closed
        np.testing.assert_allclose(proprio[i, :7][inside], pose[inside], rtol=1e-5, atol=1e-6)
        assert abs(np.linalg.norm(pose[3:7]) - 1.0) < 1e-4  # the raw quaternion dims are unit norm
        assert batch["proprio"][i, 0, 7] == (1.0 if closed[t] else -1.0)  # 0/1 normalized with p01=0, p99=1
        # absolute gripper action t = the state the command at t leads to (synthetic: 1 - closed[t+1])
        if t + 1 < len(closed):
            assert gripper_action[i] == 1.0 - closed[t + 1], (tfds_id, t)
        saw_close |= gripper_action[i] == 0.0
        saw_open_before_close |= (t == 0) and gripper_action[i] == 1.0
    assert saw_close and saw_open_before_close


# --------------------------------------------------------------------------------------------------
# ranks, mixes, skip_unlabeled


@pytest.mark.parametrize("skip_unlabeled", [False, True])
def test_two_ranks_read_disjoint_episodes_covering_the_split(synth_root, stats_dir, skip_unlabeled):
    cfg = dataset_configs.DATASET_CONFIGS[BRIDGE]
    split_info = pipeline.open_builder(synth_root, cfg).info.splits["train"]
    assert split_info.num_examples == SYNTH_EPISODES and split_info.num_examples % 2 == 1
    assert len(split_info.shard_lengths) >= 2
    rlds = config(synth_root, "bridge", stats_dir, skip_unlabeled=skip_unlabeled, batch_size=16)
    ids = [set(collect(rlds, rank=r, world_size=2)[0]["tfds_id"]) for r in (0, 1)]
    assert ids[0] and ids[1]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(reference(synth_root, BRIDGE, skip_unlabeled=skip_unlabeled))
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        pipeline.rank_split("train", 2, 2)


@pytest.mark.parametrize("skip_unlabeled", [True, False])
def test_skip_unlabeled(synth_root, stats_dir, skip_unlabeled):
    everything = reference(synth_root, BRIDGE, skip_unlabeled=False)
    unlabeled = {k for k, e in everything.items() if not e.language}
    assert len(everything) == SYNTH_EPISODES and len(unlabeled) == SYNTH_UNLABELED
    batch, info = collect(config(synth_root, "bridge", stats_dir, skip_unlabeled=skip_unlabeled, batch_size=64))
    ids = set(batch["tfds_id"])
    if skip_unlabeled:
        assert ids == set(everything) - unlabeled and all(batch["language"])
    else:
        assert ids == set(everything) and "" in batch["language"]
    stats = info.statistics[BRIDGE]
    assert stats.num_trajectories == SYNTH_EPISODES - (SYNTH_UNLABELED if skip_unlabeled else 0)
    assert_statistics_equal(stats, ref_statistics(reference(synth_root, BRIDGE, skip_unlabeled=skip_unlabeled)))


def test_mix_samples_by_weight_and_pads_proprio(synth_root, stats_dir, monkeypatch):
    monkeypatch.setitem(dataset_configs.MIXES, "test_mix", {FRACTAL: 3.0, BRIDGE: 1.0})
    cfg = config(
        synth_root,
        "test_mix",
        stats_dir,
        train=True,
        cond_steps=2,
        horizon_steps=4,
        batch_size=100,
        shuffle_buffer=64,
        read_threads=2,
        transform_threads=2,
    )
    batch, info = collect(cfg, max_batches=20)
    assert info.datasets == [FRACTAL, BRIDGE] and info.weights == pytest.approx([0.75, 0.25])
    assert info.proprio_dim == 8 and info.action_dim == 7
    index = batch["dataset_index"]
    n, p = len(index), 0.75
    assert n == 2000
    fraction = float(np.mean(index == 0))
    assert abs(fraction - p) <= 4 * math.sqrt(p * (1 - p) / n), fraction
    assert set(np.unique(index)) == {0, 1}
    for i, tfds_id in enumerate(batch["tfds_id"]):
        assert tfds_id.startswith(FRACTAL if index[i] == 0 else BRIDGE)
    assert batch["proprio"].shape == (n, 2, 8)
    assert np.all(batch["proprio"][index == 1, :, 7] == 0.0)  # bridge proprio (7) zero-padded to 8
    assert np.any(batch["proprio"][index == 0, :, 7] != 0.0)


# --------------------------------------------------------------------------------------------------
# statistics cache


def test_statistics_cache_reuse_and_invalidation(synth_root, tmp_path):
    cfg = dataset_configs.DATASET_CONFIGS[BRIDGE]
    directory = tmp_path / "stats"
    stats, path = load_or_compute_statistics(synth_root, cfg, statistics_dir=directory, read_threads=1)
    truth = ref_statistics(reference(synth_root, BRIDGE))
    assert_statistics_equal(stats, truth)

    # unchanged config: the same file, loaded (not recomputed): a planted value comes back
    data = json.loads(path.read_text())
    data["num_transitions"] = 123456
    path.write_text(json.dumps(data))
    mtime = path.stat().st_mtime_ns
    again, path_again = load_or_compute_statistics(synth_root, cfg, statistics_dir=directory, read_threads=1)
    assert path_again == path and again.num_transitions == 123456 and path.stat().st_mtime_ns == mtime

    # every change of what the standardized steps depend on: a new file with fresh statistics
    changed = {
        "extra": dataclasses.replace(cfg, extra={"variant": 1}),
        "mask": dataclasses.replace(cfg, action_normalization_mask=(True,) * 7),
    }
    paths = {path}
    for what, new_cfg in changed.items():
        new_stats, new_path = load_or_compute_statistics(synth_root, new_cfg, statistics_dir=directory, read_threads=1)
        assert new_path not in paths, what
        paths.add(new_path)
        assert new_path.is_file() and new_stats.num_transitions == truth["num_transitions"], what
    for kwargs in ({"skip_unlabeled": False}, {"split": "val"}):
        _, new_path = load_or_compute_statistics(synth_root, cfg, statistics_dir=directory, read_threads=1, **kwargs)
        assert new_path not in paths, kwargs
        paths.add(new_path)
    assert json.loads(path.read_text())["num_transitions"] == 123456  # the old file is left alone


def test_cached_statistics_are_found_without_tensorflow(synth_root, tmp_path):
    """Once computed, a mix's statistics files are found from dataset_info.json alone: no helper process,
    no tensorflow import. The split sizes read from the JSON are tfds' own."""
    from pg_vla.data.rlds.statistics import split_info

    cfg = dataset_configs.DATASET_CONFIGS[BRIDGE]
    builder = tfds.builder_from_directory(str(synth_root / BRIDGE / cfg.version))
    for split in ("train", "val"):
        truth = builder.info.splits[split]
        assert split_info(synth_root, cfg, split) == {
            "num_examples": int(truth.num_examples),
            "num_bytes": int(truth.num_bytes),
            "shard_lengths": [int(n) for n in truth.shard_lengths],
        }
    assert split_info(synth_root, cfg, "test") is None and split_info(tmp_path, cfg, "train") is None
    _, path = load_or_compute_statistics(synth_root, cfg, statistics_dir=tmp_path, read_threads=1)
    code = textwrap.dedent(f"""
        import json, sys
        import pg_vla.data.dataloader as dataloader
        from pg_vla.data.dataloader import cached_statistics, resolve_statistics, rlds_config
        dataloader.ProcessPoolExecutor = None  # a helper process would fail here
        bridge = rlds_config(data_path={str(synth_root)!r}, mix="bridge", statistics_dir={str(tmp_path)!r})
        both = rlds_config(data_path={str(synth_root)!r}, mix="oxe_simple", statistics_dir={str(tmp_path)!r})
        val = rlds_config(data_path={str(synth_root)!r}, mix="bridge", split="val", train=False,
                          statistics_dir={str(tmp_path)!r})
        out = {{"bridge": resolve_statistics(bridge), "val": cached_statistics(val), "both": cached_statistics(both)}}
        out["tensorflow"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
        print(json.dumps(out))
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=_quiet_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out == {"bridge": {BRIDGE: str(path)}, "val": {BRIDGE: str(path)}, "both": None, "tensorflow": []}


# --------------------------------------------------------------------------------------------------
# errors


def test_error_missing_data_folder(tmp_path, stats_dir):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        pipeline.make_dataset(config(missing, "bridge", stats_dir))
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no RLDS dataset at") as err:
        pipeline.make_dataset(config(empty, "bridge", stats_dir))
    assert "bridge_dataset/1.0.0" in str(err.value)


def test_error_unknown_dataset_or_mix(synth_root, stats_dir, monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset mix 'no_such_mix'.*known mixes: .*bridge"):
        config(synth_root, "no_such_mix", stats_dir)
    with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'.*bridge_dataset"):
        dataset_configs.get_dataset_config("no_such_dataset")
    monkeypatch.setitem(dataset_configs.MIXES, "bad_mix", {"no_such_dataset": 1.0})
    with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'"):
        pipeline.make_dataset(config(synth_root, "bad_mix", stats_dir))
    with pytest.raises(ValueError, match="Unknown split 'nope'"):
        pipeline.make_dataset(config(synth_root, "bridge", stats_dir, split="nope"))


def test_error_wrong_image_key(synth_root, stats_dir, monkeypatch):
    bad = dataclasses.replace(dataset_configs.DATASET_CONFIGS[BRIDGE], image_keys={"primary": "nope"})
    with pytest.raises(KeyError, match="image key 'nope'.*primary.*available.*image_0"):
        pipeline.open_builder(synth_root, bad)
    monkeypatch.setitem(dataset_configs.DATASET_CONFIGS, BRIDGE, bad)
    with pytest.raises(KeyError, match="image key 'nope'"):
        pipeline.make_dataset(config(synth_root, "bridge", stats_dir))


@pytest.fixture(scope="module")
def corrupt_root(synth_root, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the synthetic bridge with garbage written into the middle of its first train shard."""
    root = tmp_path_factory.mktemp("rlds_corrupt")
    shutil.copytree(synth_root / BRIDGE, root / BRIDGE)
    folder = root / BRIDGE / "1.0.0"
    shard = min(folder.glob(f"{BRIDGE}-train.tfrecord-*"))
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 64)
    return root, shard.name


def _iterate_corrupt(root: Path, stats_dir, synth_root, with_statistics_file: bool):
    paths = {}
    if with_statistics_file:  # reach the batch iteration itself, past the statistics pass
        paths = {BRIDGE: str(load_stats(synth_root, BRIDGE, stats_dir)[1])}
    for _ in pipeline.iterate_numpy_batches(config(root, "bridge", stats_dir / "corrupt", statistics_paths=paths)):
        pass


@pytest.mark.parametrize("with_statistics_file", [False, True], ids=["statistics", "batches"])
def test_error_corrupt_tfrecord_names_the_dataset(corrupt_root, stats_dir, synth_root, with_statistics_file):
    root, _ = corrupt_root
    with pytest.raises(pipeline.CorruptDatasetError, match="corrupt or truncated tfrecord") as err:
        _iterate_corrupt(root, stats_dir, synth_root, with_statistics_file)
    assert BRIDGE in str(err.value) and str(root) in str(err.value)


# --------------------------------------------------------------------------------------------------
# import safety, the torch loader and the CLI (fresh processes)


def test_import_safety_no_tensorflow():
    code = textwrap.dedent("""
        import sys
        import pg_vla.data.dataloader, pg_vla.data.rlds.config, pg_vla.data.normalization
        import pg_vla.model.vla.pizero
        import pg_vla.data.rlds.dataset_configs, pg_vla.data.rlds.schemas, pg_vla.data.rlds.synthetic
        from pg_vla.data.dataloader import rlds_config
        rlds_config(data_path="/nonexistent", mix="oxe_simple")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
        print("LOADED", loaded)
        sys.exit(1 if loaded else 0)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=_quiet_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


LOADER_SCRIPT = """
import json
import sys

import torch

from pg_vla.data.dataloader import make_rlds_loader, rlds_config


def main():
    cfg = rlds_config(data_path=sys.argv[1], mix="bridge", batch_size=4, image_size=32, cond_steps=2,
                      horizon_steps=3, camera_roles=["primary", "wrist"], shuffle_buffer=16, read_threads=1,
                      transform_threads=1, statistics_dir=sys.argv[2])
    loader, stats = make_rlds_loader(cfg, prefetch_batches=2)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 2:
            break
    report = {
        "tensorflow_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")),
        "stats": {k: [v.num_transitions, v.num_trajectories] for k, v in stats.items()},
        "paths": {k: str(v) for k, v in loader.dataset.rlds.statistics_paths.items()},
        "batches": [{k: [list(v.shape), str(v.dtype)] if isinstance(v, torch.Tensor)
                     else ["list", len(v), sorted({type(x).__name__ for x in v})] for k, v in b.items()}
                    for b in batches],
        "proprio_absmax": max(float(b["proprio"].abs().max()) for b in batches),
        "movement_absmax": max(float(b["actions"][..., :6].abs().max()) for b in batches),
        "gripper_values": sorted({float(x) for b in batches for x in b["actions"][..., 6].flatten()}),
        "image_mask": [b["image_mask"].tolist() for b in batches],
    }
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":  # spawned processes re-import this file
    main()
"""


class _BackgroundRun:
    """A subprocess started early (output to files, so full pipes never block it); `wait` collects it."""

    def __init__(self, command: list[str], folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            # its own process group: killing it also ends the processes it spawned
            self.process = subprocess.Popen(
                command, stdout=out, stderr=err, cwd=REPO, env=_quiet_env(), start_new_session=True
            )

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return returncode, self.stdout_path.read_text(), self.stderr_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


LOADER_TEST = "test_torch_loader_end_to_end"
CLI_TEST = "test_cli_prints_statistics_path_and_throughput"


def cli_command(data_path: Path, statistics_dir: Path) -> list[str]:
    return [
        sys.executable,
        "src/pg_vla/data/dataloader.py",
        "--data_path",
        str(data_path),
        "--mix",
        "bridge",
        "--batch_size",
        "4",
        "--num_batches",
        "3",
        "--image_size",
        "64",
        "--statistics_dir",
        str(statistics_dir),
        "--shuffle_buffer",
        "64",
        "--read_threads",
        "1",
        "--transform_threads",
        "1",
    ]


@pytest.fixture(scope="module", autouse=True)
def background_runs(request, tmp_path_factory):
    """The torch loader and CLI checks each spawn processes that import torch and tensorflow (~25 s each).
    They start when the module starts, so they run alongside the in-process tests; their tests (at the end
    of the module) wait for them. Only the selected ones are started."""
    selected = {
        getattr(item, "originalname", item.name)
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    }
    runs: dict[str, _BackgroundRun] = {}
    if selected & {LOADER_TEST, CLI_TEST}:
        root = request.getfixturevalue("synth_root")
        work = tmp_path_factory.mktemp("subprocess_runs")
        if LOADER_TEST in selected:
            script = work / "loader_check.py"
            script.write_text(LOADER_SCRIPT)
            runs[LOADER_TEST] = _BackgroundRun(
                [sys.executable, str(script), str(root), str(work / "loader_stats")], work / "loader"
            )
            runs[LOADER_TEST].statistics_dir = work / "loader_stats"
        if CLI_TEST in selected:
            runs[CLI_TEST] = _BackgroundRun(cli_command(root, work / "cli_stats"), work / "cli")
            runs[CLI_TEST].statistics_dir = work / "cli_stats"
    yield runs
    for run in runs.values():
        run.kill()


@pytest.mark.slow
def test_torch_loader_end_to_end(synth_root, background_runs):
    """make_rlds_loader (spawned statistics helper and DataLoader worker) in a fresh process."""
    run = background_runs[LOADER_TEST]
    returncode, stdout, stderr = run.wait(timeout=300)
    assert returncode == 0, stdout[-3000:] + stderr[-5000:]
    lines = [line for line in stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, stdout[-3000:] + stderr[-5000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    assert report["tensorflow_loaded"] == []  # the pipeline ran in spawned processes only
    truth = ref_statistics(reference(synth_root, BRIDGE))
    assert report["stats"] == {BRIDGE: [truth["num_transitions"], truth["num_trajectories"]]}
    assert Path(report["paths"][BRIDGE]).is_file() and Path(report["paths"][BRIDGE]).parent == run.statistics_dir
    expected = {
        "images": [[4, 4, 32, 32, 3], "torch.uint8"],  # C = 2 frames x N = 2 cameras, frame-major
        "image_mask": [[4, 4], "torch.bool"],
        "proprio": [[4, 2, 7], "torch.float32"],
        "proprio_mask": [[4, 2], "torch.bool"],
        "actions": [[4, 3, 7], "torch.float32"],
        "action_mask": [[4, 3], "torch.bool"],
        "step": [[4], "torch.int32"],
        "dataset_index": [[4], "torch.int32"],
        "language": ["list", 4, ["str"]],
        "tfds_id": ["list", 4, ["str"]],
    }
    assert len(report["batches"]) == 2
    for layout in report["batches"]:
        assert layout == expected
    assert report["proprio_absmax"] <= 1.0 and report["movement_absmax"] <= 1.0
    assert set(report["gripper_values"]) <= {0.0, 1.0}
    # (frame t-1: primary, wrist, frame t: primary, wrist): the wrist is absent, the current frame present
    assert all(mask[1::2] == [False, False] and mask[2] for masks in report["image_mask"] for mask in masks)


@pytest.mark.slow
def test_cli_prints_statistics_path_and_throughput(background_runs):
    """`python src/pg_vla/data/dataloader.py --data_path DIR --mix bridge ...` from the repository root."""
    run = background_runs[CLI_TEST]
    returncode, stdout, stderr = run.wait(timeout=300)
    assert returncode == 0, stdout[-3000:] + stderr[-5000:]
    lines = [line.strip() for line in stdout.splitlines()]
    json_paths = [Path(line) for line in lines if line.endswith(".json")]
    assert len(json_paths) == 1, stdout
    assert json_paths[0].is_file() and json_paths[0].parent == run.statistics_dir
    assert DatasetStatistics.load(json_paths[0]).num_trajectories == SYNTH_EPISODES - SYNTH_UNLABELED
    throughput = [line for line in lines if line.endswith("frames/s")]
    assert len(throughput) == 1 and throughput[0].startswith("12 frames in"), stdout
