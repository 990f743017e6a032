"""Rewriting RLDS datasets with resized images (`pg_vla.data.rlds.resize`, scripts/data/modify_rlds_dataset.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pg_vla.data.rlds import synthetic
from pg_vla.data.rlds.resize import check_output_dir, modify_rlds_dataset, resolve_input_dir
from pg_vla.data.rlds.schemas import BRIDGE_NAME, BRIDGE_VERSION, FRACTAL_NAME, FRACTAL_VERSION
from rlds_features import feature_leaves

tfds = pytest.importorskip("tensorflow_datasets")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "data" / "modify_rlds_dataset.py"
REAL_BRIDGE_ROOT = REPO.parent / "shared" / "data" / "bridge_debug"

SMALL = dict(min_steps=4, max_steps=7, seed=5)
# (dataset name, version, maker, source image size, episodes per split, shards, output size)
CASES = {
    "bridge": (BRIDGE_NAME, BRIDGE_VERSION, synthetic.make_synthetic_bridge, (96, 96), 5, 2, 48),
    "fractal": (FRACTAL_NAME, FRACTAL_VERSION, synthetic.make_synthetic_fractal, (256, 320), 4, 2, 64),
}


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory) -> dict[str, tuple[Path, Path, int]]:
    """case -> (input dataset folder, output dataset folder, output image size)."""
    root = tmp_path_factory.mktemp("modify_rlds")
    out = {}
    for case, (name, version, make, size, episodes, shards, new_size) in CASES.items():
        source = make(root / "raw", episodes_per_split=episodes, image_size=size, num_shards=shards, **SMALL)
        target = modify_rlds_dataset(root / "raw", name, root / "resized", image_size=new_size, num_workers=2)
        assert target == root / "resized" / name / version
        out[case] = (source, target, new_size)
    return out


# --------------------------------------------------------------------------------------------------
# helpers (independent of the module under test)


def _image_paths(features) -> list[str]:
    return [path for path, leaf in feature_leaves(features).items() if leaf[0] == "Image"]


def _read(folder: Path, split: str, raw_images: bool = False) -> list[dict]:
    """Episodes in on-disk order; steps as lists of dicts; images raw bytes if `raw_images`."""
    builder = tfds.builder_from_directory(str(folder))
    decoders = None
    if raw_images:
        decoders = {}
        for path in _image_paths(builder.info.features):
            node = decoders
            *parents, leaf = path.split("/")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = tfds.decode.SkipDecoding()
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders, read_config=tfds.ReadConfig(interleave_cycle_length=1)
    )
    episodes = []
    for episode in tfds.as_numpy(ds):
        episode = dict(episode)
        episode["steps"] = list(episode["steps"])
        episodes.append(episode)
    return episodes


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): tree}


def _pil_resize(encoded: bytes, height: int, width: int) -> np.ndarray:
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def _compare(source: Path, target: Path, new_size: int) -> None:
    src_info = tfds.builder_from_directory(str(source)).info
    out_info = tfds.builder_from_directory(str(target)).info
    image_paths = set(_image_paths(src_info.features))
    assert image_paths

    # Schema: identical except the image shapes (and the encoding, JPEG already).
    src_schema = feature_leaves(src_info.features, with_description=True)
    out_schema = feature_leaves(out_info.features, with_description=True)
    assert src_schema.keys() == out_schema.keys()
    for path, leaf in src_schema.items():
        if path in image_paths:
            assert out_schema[path] == (leaf[0], (new_size, new_size, leaf[1][2]), leaf[2], "jpeg", leaf[4]), path
        else:
            assert out_schema[path] == leaf, path

    # Splits: same names, episode counts and shard layout; metadata kept.
    assert list(out_info.splits.keys()) == list(src_info.splits.keys())
    for split in src_info.splits.keys():
        assert out_info.splits[split].num_examples == src_info.splits[split].num_examples
        assert list(out_info.splits[split].shard_lengths) == list(src_info.splits[split].shard_lengths)
    assert out_info.disable_shuffling == src_info.disable_shuffling is False
    assert out_info.description == src_info.description and out_info.name == src_info.name
    assert str(out_info.version) == str(src_info.version)

    errors = []
    for split in src_info.splits.keys():
        raw, out = _read(source, split, raw_images=True), _read(target, split)
        assert len(raw) == len(out) == src_info.splits[split].num_examples
        for src_ep, out_ep in zip(raw, out):  # same order
            assert len(src_ep["steps"]) == len(out_ep["steps"])
            src_meta = _flat({k: v for k, v in src_ep.items() if k != "steps"})
            out_meta = _flat({k: v for k, v in out_ep.items() if k != "steps"})
            assert src_meta.keys() == out_meta.keys()
            for key in src_meta:
                np.testing.assert_array_equal(out_meta[key], src_meta[key], err_msg=key)
            for src_step, out_step in zip(src_ep["steps"], out_ep["steps"]):
                src_flat, out_flat = _flat(src_step), _flat(out_step)
                assert src_flat.keys() == out_flat.keys()
                for key, value in src_flat.items():
                    if f"steps/{key}" in image_paths:
                        image = out_flat[key]
                        assert image.shape == (new_size, new_size, 3) and image.dtype == np.uint8
                        reference = _pil_resize(value, new_size, new_size)
                        errors.append(np.abs(image.astype(np.float64) - reference).mean())
                        assert np.abs(image.astype(np.float64) - reference).mean() < 4.0, key
                    else:
                        assert type(out_flat[key]) is type(value), key
                        np.testing.assert_array_equal(out_flat[key], value, err_msg=key)
    assert errors and np.mean(errors) < 3.0, np.mean(errors)


# --------------------------------------------------------------------------------------------------
# library


@pytest.mark.parametrize("case", list(CASES))
def test_rewritten_dataset_matches_input(rewritten, case):
    source, target, new_size = rewritten[case]
    _compare(source, target, new_size)
    # The output is an ordinary (file-shuffleable) dataset for the training reader.
    builder = tfds.builder_from_directory(str(target))
    ds = builder.as_dataset(split="train", shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=1))
    assert sum(1 for _ in ds) == builder.info.splits["train"].num_examples
    assert sorted(p.name for p in target.parent.parent.iterdir()) == sorted(
        CASES[c][0] for c in CASES
    )  # no staging folders left behind


def test_resize_of_a_sized_image_and_errors(rewritten, tmp_path):
    source, _, _ = rewritten["bridge"]
    raw_root = source.parent.parent
    # Same size as the input: JPEG bytes are copied, not re-encoded.
    same = modify_rlds_dataset(raw_root, BRIDGE_NAME, tmp_path / "same", image_size=96, splits=["val"], num_shards=1)
    assert list(tfds.builder_from_directory(str(same)).info.splits.keys()) == ["val"]
    assert tfds.builder_from_directory(str(same)).info.splits["val"].num_shards == 1
    src_ep, out_ep = _read(source, "val", raw_images=True)[0], _read(same, "val", raw_images=True)[0]
    assert out_ep["steps"][0]["observation"]["image_0"] == src_ep["steps"][0]["observation"]["image_0"]

    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_input_dir(tmp_path / "missing", BRIDGE_NAME)
    with pytest.raises(FileNotFoundError, match="no dataset 'nope'.*bridge_dataset"):
        resolve_input_dir(raw_root, "nope")
    with pytest.raises(FileNotFoundError, match="version '9.9.9'.*1.0.0"):
        resolve_input_dir(raw_root, BRIDGE_NAME, "9.9.9")
    assert resolve_input_dir(raw_root, BRIDGE_NAME) == source
    with pytest.raises(FileExistsError, match="overwrite"):
        modify_rlds_dataset(raw_root, BRIDGE_NAME, tmp_path / "same", image_size=32)
    replaced = modify_rlds_dataset(
        raw_root, BRIDGE_NAME, tmp_path / "same", image_size=32, splits=["val"], overwrite=True
    )
    assert feature_leaves(tfds.builder_from_directory(str(replaced)).info.features)["steps/observation/image_3"][1] == (
        32,
        32,
        3,
    )
    with pytest.raises(ValueError, match="overlaps"):
        check_output_dir(source, raw_root, overwrite=True)
    with pytest.raises(ValueError, match="unknown split"):
        modify_rlds_dataset(raw_root, BRIDGE_NAME, tmp_path / "other", image_size=32, splits=["test"])
    assert not (tmp_path / "other" / BRIDGE_NAME).exists()


# --------------------------------------------------------------------------------------------------
# script


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_script_end_to_end_and_errors(rewritten, tmp_path):
    source, _, _ = rewritten["fractal"]
    raw_root = str(source.parent.parent)
    out = tmp_path / "out"
    args = [
        "--data_path",
        raw_root,
        "--dataset_name",
        FRACTAL_NAME,
        "--output_path",
        str(out),
        "--image_size",
        "40",
        "--jpeg_quality",
        "90",
        "--num_workers",
        "2",
    ]
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    target = out / FRACTAL_NAME / FRACTAL_VERSION
    assert done.stdout.strip() == str(target)  # stdout: the output folder only
    _compare(source, target, 40)

    again = _run(*args)
    assert again.returncode != 0 and "already exists" in again.stderr and "--overwrite" in again.stderr

    missing = _run(
        "--data_path", str(tmp_path / "nowhere"), "--dataset_name", FRACTAL_NAME, "--output_path", str(tmp_path / "x")
    )
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    unknown = _run("--data_path", raw_root, "--dataset_name", "nope", "--output_path", str(tmp_path / "x"))
    assert unknown.returncode != 0 and "no dataset 'nope'" in unknown.stderr
    version = _run(
        "--data_path",
        raw_root,
        "--dataset_name",
        FRACTAL_NAME,
        "--version",
        "2.0.0",
        "--output_path",
        str(tmp_path / "x"),
    )
    assert version.returncode != 0 and "'2.0.0'" in version.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# real data


def test_real_bridge_subset(tmp_path):
    folder = REAL_BRIDGE_ROOT / BRIDGE_NAME / BRIDGE_VERSION
    if not folder.is_dir():
        pytest.skip(f"real bridge debug dataset not found at {folder}")
    target = modify_rlds_dataset(REAL_BRIDGE_ROOT, BRIDGE_NAME, tmp_path, image_size=32, num_workers=2)
    info = tfds.builder_from_directory(str(target)).info
    assert feature_leaves(info.features)["steps/observation/image_0"][1] == (32, 32, 3)
    for split in tfds.builder_from_directory(str(folder)).info.splits.keys():
        builder_in = tfds.builder_from_directory(str(folder))
        lengths = []
        for builder in (builder_in, tfds.builder_from_directory(str(target))):
            ds = builder.as_dataset(
                split=split,
                shuffle_files=False,
                read_config=tfds.ReadConfig(interleave_cycle_length=1),
                decoders={"steps": {"observation": {f"image_{k}": tfds.decode.SkipDecoding() for k in range(4)}}},
            )
            lengths.append([int(ep["steps"].cardinality()) for ep in ds])
        assert lengths[0] == lengths[1] and len(lengths[0]) == info.splits[split].num_examples
        assert sum(lengths[0]) > 0
    json.loads((target / "dataset_info.json").read_text())  # plain JSON
