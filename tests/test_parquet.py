"""Parquet episodes against independent references.

- the RLDS pipeline: the same episodes read from RLDS (the real BridgeData V2 subset and a synthetic
  bridge dataset) and from their Parquet conversion give identical batches and statistics;
- TensorFlow's own image decoding and resizing (what the RLDS path runs) for the tf-free decoder;
- numpy computations of windows, masks, normalization and statistics on hand-made episodes;
- bounded memory on a file much larger than the row-group budget (RSS measured in a subprocess,
  which also checks that no tensorflow is imported and that spawned workers deliver batches);
- errors naming the file, row and column; column-name mapping; rank shares; the conversion CLI.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pg_vla.data.parquet import ParquetConfig, ParquetDataError, ParquetEpisodeWriter, make_parquet_loader
from pg_vla.data.parquet.images import decode_and_resize, decode_rgb
from pg_vla.data.rlds.synthetic import make_synthetic_bridge

REPO = Path(__file__).resolve().parents[1]
REAL_BRIDGE_ROOT = REPO / ".." / "shared" / "data" / "bridge_debug"
BRIDGE = "bridge_dataset"
ROLES = ("primary", "secondary", "wrist")  # bridge: image_0, image_1, no wrist camera

# TensorFlow is loaded when the tests run, not at collection (see test_rlds_pipeline.py).
tf = pipeline = convert = None


@pytest.fixture(scope="module", autouse=True)
def _tensorflow_modules():
    global tf, pipeline, convert
    tf = pytest.importorskip("tensorflow")
    from pg_vla.data.parquet import convert as convert_module
    from pg_vla.data.rlds import pipeline as pipeline_module

    pipeline, convert = pipeline_module, convert_module


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# fixtures: RLDS datasets and their Parquet conversions


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, synth_rlds):
    """The conversion CLI (imports tensorflow, ~20 s) starts early and runs alongside the other tests."""
    out = tmp_path_factory.mktemp("cli_parquet")
    log = open(out / "log.txt", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "scripts/data/rlds_to_parquet.py",
            "--data_path",
            str(synth_rlds),
            "--dataset_name",
            BRIDGE,
            "--split",
            "val",
            "--output_dir",
            str(out / "data"),
            "--rows_per_group",
            "8",
            "--max_episodes",
            "3",
        ],
        cwd=REPO,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process, out
    if process.poll() is None:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def synth_rlds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rlds_synthetic")
    make_synthetic_bridge(
        root, episodes_per_split=5, min_steps=4, max_steps=9, image_size=(32, 32), num_shards=2, seed=3
    )
    return root


@pytest.fixture(scope="module")
def real_rlds() -> Path:
    folder = REAL_BRIDGE_ROOT / BRIDGE / "1.0.0"
    if not (folder / "dataset_info.json").is_file():
        pytest.skip(f"real BridgeData V2 debug subset not found at {folder.resolve()} (CI/dev-only data)")
    return REAL_BRIDGE_ROOT.resolve()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, request):
    """source -> (RLDS root, Parquet folder); small row groups and files so episodes cross both."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(source: str) -> tuple[Path, Path]:
        if source not in cache:
            root = request.getfixturevalue("real_rlds" if source == "real" else "synth_rlds")
            out = tmp_path_factory.mktemp(f"parquet_{source}")
            files = convert.convert_rlds_to_parquet(
                root, BRIDGE, "train", out, rows_per_group=7, rows_per_file=60 if source == "real" else 15
            )
            assert len(files) >= 2
            cache[source] = root, out
        return cache[source]

    return get


def parquet_config(path, stats_dir, **kwargs) -> ParquetConfig:
    base = dict(
        paths=(str(path),),
        image_2_role="secondary",
        camera_roles=ROLES,
        train=False,
        image_size=32,
        cond_steps=3,
        horizon_steps=4,
        batch_size=16,
        num_workers=0,
        statistics_dir=str(stats_dir),
    )
    return ParquetConfig(**{**base, **kwargs})


def parquet_batches(cfg: ParquetConfig, max_batches: int | None = None) -> tuple[list[dict], dict]:
    loader, stats = make_parquet_loader(cfg)
    out = []
    for batch in loader:
        out.append({k: v.numpy() if hasattr(v, "numpy") else v for k, v in batch.items()})
        if max_batches is not None and len(out) == max_batches:
            break
    return out, stats


def assert_batches_equal(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert set(g) == set(e), i
        for key in e:
            if isinstance(e[key], list):
                assert g[key] == e[key], (i, key)
            else:
                assert g[key].dtype == e[key].dtype and g[key].shape == e[key].shape, (i, key)
                np.testing.assert_array_equal(g[key], e[key], err_msg=f"batch {i} {key}")


# --------------------------------------------------------------------------------------------------
# (a) RLDS and Parquet: identical batches


@pytest.mark.parametrize("source, image_size", [("real", 64), ("real", 48), ("synthetic", 32), ("synthetic", 24)])
def test_rlds_and_parquet_batches_are_identical(converted, tmp_path, source, image_size):
    """An ordered pass: images (decoded, and resized when image_size differs), windows, masks, language, ids."""
    root, folder = converted(source)
    rlds = pipeline.RLDSConfig(
        data_path=str(root),
        mix="bridge",
        train=False,
        image_size=image_size,
        cond_steps=3,
        horizon_steps=4,
        batch_size=16,
        read_threads=1,
        transform_threads=1,
        statistics_dir=str(tmp_path / "rlds_stats"),
        camera_roles=ROLES,
    )
    ds, info = pipeline.make_dataset(rlds)
    expected = [pipeline.to_numpy_batch(b) for b in ds]
    got, stats = parquet_batches(parquet_config(folder, tmp_path / "parquet_stats", image_size=image_size))
    assert_batches_equal(got, expected)
    # statistics computed independently on both sides agree exactly
    ref, mine = info.statistics[BRIDGE], stats["parquet"]
    assert (mine.num_transitions, mine.num_trajectories) == (ref.num_transitions, ref.num_trajectories)
    for kind in ("action", "proprio"):
        for key in ("mean", "std", "min", "max", "p01", "p99"):
            np.testing.assert_array_equal(getattr(getattr(mine, kind), key), getattr(getattr(ref, kind), key))
    merged = {k: np.concatenate([b[k] for b in got]) for k in ("action_mask", "proprio_mask", "image_mask")}
    assert (~merged["action_mask"]).any() and (~merged["proprio_mask"]).any()  # padding was exercised
    views = merged["image_mask"].reshape(len(merged["image_mask"]), 3, len(ROLES))  # (F, C, N) frame-major
    np.testing.assert_array_equal(views[..., 0], merged["proprio_mask"])  # masked only before the episode start
    assert not views[..., 2].any()
    if source == "synthetic":  # one of the 5 synthetic episodes is unlabeled: skipped on both sides
        assert mine.num_trajectories == 4


def test_statistics_are_cached_and_a_fixed_file_wins(converted, tmp_path):
    _, folder = converted("synthetic")
    cfg = parquet_config(folder, tmp_path / "stats")
    _, first = parquet_batches(cfg, max_batches=1)
    files = list((tmp_path / "stats").glob("*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    loader, _ = make_parquet_loader(cfg)
    assert loader.dataset.statistics_path == files[0] and files[0].stat().st_mtime_ns == stamp  # reused
    fixed = REPO / "config" / "bridge_statistics.json"
    loader, stats = make_parquet_loader(parquet_config(folder, tmp_path / "other", statistics_path=str(fixed)))
    assert loader.dataset.statistics_path == fixed and stats["parquet"].num_transitions == 2195527
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------------------------------
# images against TensorFlow's decoder and resize


def test_images_match_tensorflow_decode_and_resize():
    rng = np.random.default_rng(0)
    cases = 0
    for trial in range(24):
        height, width = (int(v) for v in rng.integers(1, 70, 2))
        pixels = (np.cumsum(rng.integers(0, 50, (height, width, 3)), axis=1) % 256).astype(np.uint8)
        encodings = [
            tf.io.encode_jpeg(pixels, quality=95).numpy(),
            tf.io.encode_png(pixels).numpy(),
            tf.io.encode_jpeg(pixels[:, :, :1]).numpy(),
        ]
        for subsampling in (0, 1, 2):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(
                buffer, "JPEG", quality=int(rng.integers(40, 100)), subsampling=subsampling, progressive=bool(trial % 2)
            )
            encodings.append(buffer.getvalue())
        for encoded in encodings:
            reference = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
            np.testing.assert_array_equal(decode_rgb(encoded), reference)
            size = int(rng.integers(2, 90))
            resized = tf.image.resize(tf.cast(reference, tf.float32), [size, size], method="bilinear", antialias=True)
            expected = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
            image, present = decode_and_resize(encoded, size)
            assert present
            np.testing.assert_array_equal(image, expected, err_msg=f"{height}x{width} -> {size}")
            cases += 1
    assert cases == 24 * 6
    image, present = decode_and_resize(b"", 8)
    assert not present and not image.any()


# --------------------------------------------------------------------------------------------------
# windows, normalization and statistics against numpy on hand-made episodes


def _episode(rng: np.random.Generator, length: int, state_dim: int = 4, action_dim: int = 3):
    frames = [_jpeg(np.full((8, 8, 3), 10 * t, np.uint8)) for t in range(length)]
    return frames, rng.normal(size=(length, state_dim)), rng.normal(size=(length, action_dim))


@pytest.fixture
def handmade(tmp_path) -> tuple[Path, list]:
    """3 episodes (lengths 5, 1, 6; the second unlabeled) over row groups of 4 rows."""
    rng = np.random.default_rng(1)
    episodes = []
    with ParquetEpisodeWriter(tmp_path / "data", rows_per_group=4) as writer:
        for i, (length, prompt) in enumerate(((5, "stack the cups"), (1, ""), (6, "open the drawer"))):
            images, state, action = _episode(rng, length)
            action[:, -1] = rng.integers(0, 2, length)  # gripper 0/1
            prompts = [prompt] + [None] * (length - 1) if i == 2 else prompt  # later rows may omit the prompt
            writer.add_episode(images, state, action, prompts, episode_id=f"ep{i}")
            episodes.append((state.astype(np.float32), action.astype(np.float32), prompt))
    return tmp_path / "data", episodes


@pytest.mark.parametrize(
    "normalization, normalize_gripper", [("bounds", False), ("gaussian", True), ("mean_std", False), ("quantile", True)]
)
def test_windows_and_normalization_against_numpy(handmade, tmp_path, normalization, normalize_gripper):
    folder, episodes = handmade
    cond, horizon = 2, 3
    cfg = parquet_config(
        folder,
        tmp_path,
        camera_roles=("primary", "wrist"),
        image_2_role="wrist",
        image_size=8,
        cond_steps=cond,
        horizon_steps=horizon,
        batch_size=4,
        normalization=normalization,
        normalize_gripper=normalize_gripper,
    )
    batches, stats = parquet_batches(cfg)
    labeled = [e for e in episodes if e[2]]
    states = np.concatenate([e[0] for e in labeled]).astype(np.float64)
    actions = np.concatenate([e[1] for e in labeled]).astype(np.float64)
    st = stats["parquet"]
    assert (st.num_transitions, st.num_trajectories) == (11, 2)
    np.testing.assert_allclose(st.proprio.mean, states.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.action.p99, np.quantile(actions, 0.99, axis=0), rtol=1e-12)
    np.testing.assert_allclose(st.action.std, actions.std(0), rtol=1e-12)

    def norm(x, values, mask):
        low, high = np.quantile(values, 0.01, axis=0), np.quantile(values, 0.99, axis=0)
        if normalization == "bounds":
            y = np.clip(2 * (x - low) / (high - low) - 1, -1, 1)
        elif normalization == "quantile":  # openpi pi0.5: not clipped
            y = 2 * (x - low) / (high - low + 1e-6) - 1
        else:  # mean_std (openpi pi0), gaussian its other name
            y = (x - values.mean(0)) / (values.std(0) + 1e-6)
        return np.where(mask, y, x)

    gripper_mask = np.array([True, True, normalize_gripper])
    rows = [(i, t) for i, e in enumerate(episodes) if e[2] for t in range(len(e[0]))]
    merged = {
        k: np.concatenate([b[k] for b in batches])
        if not isinstance(batches[0][k], list)
        else [x for b in batches for x in b[k]]
        for k in batches[0]
    }
    assert [len(b["step"]) for b in batches] == [4, 4, 3]  # ordered pass keeps the last partial batch
    assert merged["tfds_id"] == [f"ep{i}" for i, _ in rows] and list(merged["step"]) == [t for _, t in rows]
    assert merged["language"] == [episodes[i][2] for i, _ in rows]  # omitted prompts take the episode's
    for n, (i, t) in enumerate(rows):
        state, action, _ = episodes[i]
        history, chunk = t - cond + 1 + np.arange(cond), t + np.arange(horizon)
        np.testing.assert_array_equal(merged["proprio_mask"][n], history >= 0)
        np.testing.assert_array_equal(merged["action_mask"][n], chunk < len(action))
        np.testing.assert_allclose(
            merged["proprio"][n], norm(state[np.maximum(history, 0)], states, True), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            merged["actions"][n],
            norm(action[np.minimum(chunk, len(action) - 1)], actions, gripper_mask),
            rtol=1e-5,
            atol=1e-5,
        )
        # image history, frame-major (primary, wrist): the frames of steps t-C+1 .. t, the first repeated
        levels = merged["images"][n].reshape(cond, 2, -1).mean(axis=-1)  # (C, N)
        np.testing.assert_allclose(levels[:, 0], 10 * np.maximum(history, 0), atol=2)
        np.testing.assert_array_equal(
            merged["image_mask"][n], np.stack([history >= 0, np.zeros(cond, bool)], 1).ravel()
        )
    assert merged["images"].shape[1] == cond * 2 and (~merged["image_mask"][:, 0]).any()
    assert not merged["images"][:, 1::2].any()  # the absent wrist camera is black in every frame


def test_training_stream_shapes_seeds_and_ranks(handmade, tmp_path):
    folder, episodes = handmade
    cfg = parquet_config(
        folder,
        tmp_path,
        camera_roles=("primary",),
        image_size=16,
        cond_steps=1,
        horizon_steps=2,
        batch_size=5,
        train=True,
        shuffle_buffer=6,
        skip_unlabeled=False,
        seed=7,
    )
    first, _ = parquet_batches(cfg, max_batches=6)
    again, _ = parquet_batches(cfg, max_batches=6)
    assert_batches_equal(again, first)  # the stream is a function of the seed
    other, _ = parquet_batches(dataclasses.replace(cfg, seed=8), max_batches=6)
    assert any(a["tfds_id"] != b["tfds_id"] or list(a["step"]) != list(b["step"]) for a, b in zip(first, other))
    for batch in first:  # full batches only, resized images, the layout of the RLDS loader
        assert batch["images"].shape == (5, 1, 16, 16, 3) and batch["images"].dtype == np.uint8
        assert batch["proprio"].shape == (5, 1, 4) and batch["actions"].shape == (5, 2, 3)
        assert batch["step"].dtype == np.int32 and batch["dataset_index"].dtype == np.int32
    seen = {(i, int(s)) for b in first for i, s in zip(b["tfds_id"], b["step"])}
    assert len(seen) == 12  # 30 frames drawn from 12 steps: every step appears, the stream repeats

    # ranks: contiguous disjoint shares of the episodes whose union is all of them
    shares = []
    for rank in range(2):
        cfg_rank = parquet_config(folder, tmp_path, skip_unlabeled=False, image_size=8, camera_roles=("primary",))
        loader, _ = make_parquet_loader(cfg_rank, rank=rank, world_size=2)
        shares.append({i for b in loader for i in b["tfds_id"]})
    assert shares == [{"ep0"}, {"ep1", "ep2"}]
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        make_parquet_loader(parquet_config(folder, tmp_path, image_size=8), rank=0, world_size=4)


# --------------------------------------------------------------------------------------------------
# (d) column-name mapping


def test_column_mapping(converted, tmp_path):
    _, folder = converted("synthetic")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    names = {"state": "observation.state", "image_1": "observation.images.top", "action": "actions", "prompt": "task"}
    for file in sorted(folder.glob("*.parquet")):
        table = pq.read_table(file)
        table = table.rename_columns([names.get(n, n) for n in table.column_names])
        # the second camera as a field of a struct column: "cameras.side"
        side = pa.StructArray.from_arrays([table.column("image_2").combine_chunks()], names=["side"])
        table = table.drop_columns(["image_2"]).append_column("cameras", side)
        pq.write_table(table, renamed / file.name, row_group_size=5)
    mapping = {**{v: k for k, v in names.items()}, "cameras.side": "image_2"}
    mapping = {logical: column for column, logical in mapping.items()}
    expected, _ = parquet_batches(parquet_config(folder, tmp_path / "a"))
    got, _ = parquet_batches(parquet_config(renamed, tmp_path / "b", columns=mapping))
    for batch in expected + got:
        batch.pop("tfds_id")
    assert_batches_equal(got, expected)
    with pytest.raises(ParquetDataError, match="column 'action': required column is missing"):
        make_parquet_loader(parquet_config(renamed, tmp_path / "c"))


# --------------------------------------------------------------------------------------------------
# (c) errors naming the file, the row and the column


def _write_rows(path: Path, rows: dict, row_group_size: int = 3) -> Path:
    pq.write_table(pa.table(rows), path, row_group_size=row_group_size)
    return path


def _good_rows(n: int = 6) -> dict:
    frame = _jpeg(np.full((8, 8, 3), 100, np.uint8))
    return {
        "image_1": pa.array([frame] * n, pa.binary()),
        "state": pa.array([[0.1 * i, 0.2, 0.3] for i in range(n)], pa.list_(pa.float32())),
        "action": pa.array([[0.0, 0.1 * i] for i in range(n)], pa.list_(pa.float32())),
        "is_first": [i % 3 == 0 for i in range(n)],
        "is_last": [i % 3 == 2 for i in range(n)],
        "is_terminal": [i % 3 == 2 for i in range(n)],
        "prompt": ["push"] * n,
    }


def _error(tmp_path: Path, rows: dict, **kwargs) -> str:
    path = _write_rows(tmp_path / "bad.parquet", rows)
    with pytest.raises(ParquetDataError) as err:
        cfg = parquet_config(
            path, tmp_path / "stats", camera_roles=("primary",), image_size=8, cond_steps=1, horizon_steps=2, **kwargs
        )
        parquet_batches(cfg)
    message = str(err.value)
    assert str(path) in message, message
    return message


def test_error_missing_required_column(tmp_path):
    rows = _good_rows()
    del rows["action"]
    message = _error(tmp_path, rows)
    assert "column 'action'" in message and "required column is missing" in message and "all rows" in message


def test_error_state_length(tmp_path):
    rows = _good_rows()
    rows["state"] = pa.array([[0.0, 0.0, 0.0]] * 4 + [[0.0, 0.0]] + [[0.0, 0.0, 0.0]], pa.list_(pa.float32()))
    assert "row 4, column 'state': has 2 values, expected 3" in _error(tmp_path, rows)
    rows = _good_rows()  # a configured length that the data does not have
    assert "row 0, column 'state': has 3 values, expected 7" in _error(tmp_path, rows, state_dim=7)
    rows = _good_rows()
    rows["observation.state"] = rows.pop("state")
    message = _error(tmp_path, rows, state_dim=4, columns={"state": "observation.state"})
    assert "row 0, column 'observation.state'" in message


def test_error_rows_before_the_first_is_first(tmp_path):
    rows = _good_rows()
    rows["is_first"] = [False, False, False, True, False, False]
    rows["is_last"] = [False, False, True, False, False, True]
    message = _error(tmp_path, rows)
    assert "row 0, column 'is_first': rows 0..2 come before the first is_first=True row" in message


def test_error_inconsistent_is_last(tmp_path):
    rows = _good_rows()
    rows["is_last"] = [False, True, False, False, False, True]
    assert "row 1, column 'is_last'" in _error(tmp_path, rows)


def test_error_undecodable_image(tmp_path):
    rows = _good_rows()
    images = rows["image_1"].to_pylist()
    images[4] = b"\xff\xd8not really a jpeg"
    rows["image_1"] = pa.array(images, pa.binary())
    message = _error(tmp_path, rows)
    assert "row 4, column 'image_1': cannot decode image" in message


# --------------------------------------------------------------------------------------------------
# (b) bounded memory, no tensorflow, spawned workers (a fresh process)

MEMORY_SCRIPT = textwrap.dedent("""
    import io, json, os, sys
    import numpy as np
    from PIL import Image

    def rss_mib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024

    def main():
        from pg_vla.data.parquet import ParquetConfig, ParquetEpisodeWriter, make_parquet_loader

        folder, stats_dir = sys.argv[1], sys.argv[2]
        rng = np.random.default_rng(0)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
        jpeg = buffer.getvalue()
        padding = 100_000  # random bytes after the JPEG's end marker: big, incompressible rows
        with ParquetEpisodeWriter(folder, rows_per_group=160, compression="none") as writer:
            for episode in range(100):  # 1,600 rows of ~100 KB: a ~160 MB file of 10 row groups
                images = [jpeg + rng.bytes(padding) for _ in range(16)]
                writer.add_episode(images, rng.normal(size=(16, 7)), rng.normal(size=(16, 7)), "lift the block",
                                   episode_id=str(episode))
        size_mib = os.path.getsize(writer.files[0]) / 2**20
        cfg = ParquetConfig(paths=(folder,), train=False, image_size=8, batch_size=32, num_workers=0,
                            row_group_budget_mb=4, statistics_dir=stats_dir)
        loader, _ = make_parquet_loader(cfg)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM): writing the file above must not count
        baseline = rss_mib("VmRSS")
        frames = sum(len(batch["language"]) for batch in loader)
        peak = rss_mib("VmHWM")
        train = ParquetConfig(paths=(folder,), train=True, image_size=8, batch_size=8, num_workers=1,
                              shuffle_buffer=64, cycle_length=2, row_group_budget_mb=4, statistics_dir=stats_dir)
        loader, _ = make_parquet_loader(train)
        shapes = []
        for batch in loader:
            shapes.append(list(batch["images"].shape))
            if len(shapes) == 3:
                break
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
        print("REPORT " + json.dumps({"file_mib": size_mib, "frames": frames, "baseline_mib": baseline,
                                      "peak_mib": peak, "worker_shapes": shapes, "tensorflow": loaded}), flush=True)

    if __name__ == "__main__":
        main()
""")


@pytest.mark.slow
def test_memory_is_bounded_by_the_row_group_budget(tmp_path):
    script = tmp_path / "memory_check.py"
    script.write_text(MEMORY_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "big"), str(tmp_path / "stats")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads([line for line in result.stdout.splitlines() if line.startswith("REPORT ")][-1][7:])
    assert report["file_mib"] > 150 and report["frames"] == 1600
    growth = report["peak_mib"] - report["baseline_mib"]
    # a 4 MiB budget: the reader holds a few MiB of rows at a time, far less than the 160 MB file
    assert growth < 64, report
    assert report["worker_shapes"] == [[8, 1, 8, 8, 3]] * 3
    assert report["tensorflow"] == []


# --------------------------------------------------------------------------------------------------
# the conversion CLI


@pytest.mark.slow
def test_conversion_cli(cli_run, synth_rlds):
    process, out = cli_run
    assert process.wait(timeout=300) == 0, (out / "log.txt").read_text()[-3000:]
    files = sorted((out / "data").glob("*.parquet"))
    assert [f.name for f in files] == [f"{BRIDGE}-val-00000.parquet"]
    assert str(files[0]) in (out / "log.txt").read_text()
    table = pq.read_table(files[0])
    assert table.schema.names == [
        "image_1",
        "image_2",
        "state",
        "action",
        "is_first",
        "is_last",
        "is_terminal",
        "prompt",
        "episode_id",
    ]
    assert table.column("is_first").to_pylist().count(True) == 3
    assert pq.ParquetFile(files[0]).metadata.row_group(0).num_rows == 8
    # the standardized bridge steps: states of the raw episodes without their last step
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(synth_rlds / BRIDGE / "1.0.0"))
    raw = list(tfds.as_numpy(builder.as_dataset(split="val", read_config=tfds.ReadConfig(add_tfds_id=True))))
    states = np.concatenate([np.stack([s["observation"]["state"] for s in e["steps"]])[:-1] for e in raw[:3]])
    np.testing.assert_array_equal(np.asarray(table.column("state").to_pylist(), np.float32), states)
