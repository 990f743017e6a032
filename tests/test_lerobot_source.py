"""LeRobot dataset folders against independent references.

- the RLDS pipeline: the real BridgeData V2 subset read from RLDS and from its LeRobot v3.0 conversion
  (cameras as images in the parquet: identical batches; as AV1 video: identical but for the images,
  which stay within the codec's error and each nearest its own RLDS frame) and statistics (computed,
  and read from meta/stats.json);
- a v2.1 folder (one file per episode) gives the batches of the same episodes written as v3.0;
- frames looked up by timestamp at the episode boundaries of multi-episode mp4 files (each frame's
  gray level encodes its index, so a frame off by one is seen);
- errors naming file and episode: a missing column, a missing video file, a timestamp outside the video;
- bounded memory: a 10-minute video decoded through the loader, peak RSS measured in a subprocess;
- a mix of folders (weights, padded dims), the run config's data section, the loader's command line and
  a few training and validation steps of the tiny model.

The folders are written by `pg_vla.data.lerobot.writer` from the format's documentation (the
`lerobot-dataset` package, which would be an independent writer, pins huggingface-hub < 0.36 while
transformers 5 needs >= 1.31, so it cannot share this environment).
"""

from __future__ import annotations

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

from pg_vla.data.lerobot import LeRobotConfig, LeRobotDataError, LeRobotWriter, make_lerobot_loader
from pg_vla.data.lerobot.video import VideoFrame, VideoFrames

REPO = Path(__file__).resolve().parents[1]
REAL_BRIDGE_ROOT = REPO / ".." / "shared" / "data" / "bridge_debug"
BRIDGE = "bridge_dataset"
ROLES = ("primary", "secondary", "wrist")  # bridge: image_0, image_1, no wrist camera
AV1 = {"preset": "12", "crf": "10", "g": "2", "svtav1-params": "lp=1"}  # LeRobot's keyframe spacing (g=2)
VIDEO_MEAN_ERROR = 5.0  # mean |decoded - RLDS| per frame in levels, AV1 crf 10, 64x64 (measured: 2.8 mean, 3.7 worst)

tf = pipeline = convert = None


@pytest.fixture(scope="module", autouse=True)
def _tensorflow_modules():
    global tf, pipeline, convert
    tf = pytest.importorskip("tensorflow")
    from pg_vla.data.lerobot import convert as convert_module
    from pg_vla.data.rlds import pipeline as pipeline_module

    pipeline, convert = pipeline_module, convert_module


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def real_rlds() -> Path:
    folder = REAL_BRIDGE_ROOT / BRIDGE / "1.0.0"
    if not (folder / "dataset_info.json").is_file():
        pytest.skip(f"real BridgeData V2 debug subset not found at {folder.resolve()} (CI/dev-only data)")
    return REAL_BRIDGE_ROOT.resolve()


@pytest.fixture(scope="module")
def rlds_batches(real_rlds, tmp_path_factory):
    """The RLDS loader's ordered pass over the bridge train split, and its statistics."""
    rlds = pipeline.RLDSConfig(
        data_path=str(real_rlds),
        mix="bridge",
        train=False,
        image_size=64,
        cond_steps=3,
        horizon_steps=4,
        batch_size=16,
        read_threads=1,
        transform_threads=1,
        statistics_dir=str(tmp_path_factory.mktemp("rlds_stats")),
        camera_roles=ROLES,
    )
    ds, info = pipeline.make_dataset(rlds)
    return [pipeline.to_numpy_batch(b) for b in ds], info.statistics[BRIDGE]


@pytest.fixture(scope="module")
def converted(real_rlds, tmp_path_factory):
    """kind ("images" | "video") -> the bridge train split as a v3.0 folder; 60 frames per data and video
    file, so episodes share files and files end inside episodes' neighbours."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"lerobot_{kind}") / "bridge_lerobot"
            convert.convert_rlds_to_lerobot(
                real_rlds, BRIDGE, "train", out, video=kind == "video", codec_options=AV1, frames_per_file=60
            )
            cache[kind] = out
        return cache[kind]

    return get


def _config(path, stats_dir, **kwargs) -> LeRobotConfig:
    base = dict(
        path=path,
        camera_roles=ROLES,
        train=False,
        image_size=64,
        cond_steps=3,
        horizon_steps=4,
        batch_size=16,
        num_workers=0,
        statistics_dir=str(stats_dir),
    )
    return LeRobotConfig(**{**base, **kwargs})


def _batches(cfg: LeRobotConfig) -> tuple[list[dict], dict]:
    loader, stats = make_lerobot_loader(cfg)
    return [{k: v.numpy() if hasattr(v, "numpy") else v for k, v in b.items()} for b in loader], stats


def _assert_same(got: list[dict], expected: list[dict], images: bool = True) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert set(g) == set(e), i
        for key in e:
            if key == "tfds_id" or (key == "images" and not images):
                continue
            if isinstance(e[key], list):
                assert g[key] == e[key], (i, key)
            else:
                assert g[key].dtype == e[key].dtype and g[key].shape == e[key].shape, (i, key)
                np.testing.assert_array_equal(g[key], e[key], err_msg=f"batch {i} {key}")


def _episode_ids(batches: list[dict]) -> list[str]:
    return [i for b in batches for i in b["tfds_id"]]


def _same_episode_structure(got: list[dict], expected: list[dict]) -> None:
    """tfds_id differs in content: the same episode boundaries, named <folder>:<episode_index> in order."""
    mine, theirs = _episode_ids(got), _episode_ids(expected)
    first = {}
    for m, t in zip(mine, theirs):
        assert first.setdefault(t, m) == m
    assert list(first.values()) == [f"bridge_lerobot:{e}" for e in range(len(first))]


def _assert_statistics_equal(mine, ref) -> None:
    assert (mine.num_transitions, mine.num_trajectories) == (ref.num_transitions, ref.num_trajectories)
    for kind in ("action", "proprio"):
        for key in ("mean", "std", "min", "max", "p01", "p99"):
            np.testing.assert_array_equal(getattr(getattr(mine, kind), key), getattr(getattr(ref, kind), key))


# --------------------------------------------------------------------------------------------------
# against the RLDS loader


def test_images_in_parquet_give_the_rlds_batches_exactly(converted, rlds_batches, tmp_path):
    """An ordered pass: images, windows, masks, language, step; statistics computed and from stats.json."""
    expected, ref = rlds_batches
    folder = converted("images")
    got, stats = _batches(_config(folder, tmp_path / "computed", use_dataset_stats=False))
    _assert_same(got, expected)
    _same_episode_structure(got, expected)
    _assert_statistics_equal(stats["bridge_lerobot"], ref)
    merged = {k: np.concatenate([b[k] for b in got]) for k in ("action_mask", "proprio_mask", "image_mask")}
    assert (~merged["action_mask"]).any() and (~merged["proprio_mask"]).any()  # padding was exercised
    views = merged["image_mask"].reshape(len(merged["image_mask"]), 3, len(ROLES))  # (F, C, N) frame-major
    assert views[:, -1, :2].all() and not views[..., 2].any()
    np.testing.assert_array_equal(views[..., 0], merged["proprio_mask"])  # masked only before the episode start
    assert len({e.parent for e in folder.glob("data/chunk-*/file-*.parquet")}) == 1
    assert len(list(folder.glob("data/chunk-*/file-*.parquet"))) >= 3  # many episodes per file, several files
    # meta/stats.json (q01/q99 -> p01/p99) gives the same statistics, cached by its own key
    loader, from_json = make_lerobot_loader(_config(folder, tmp_path / "from_json"))
    _assert_statistics_equal(from_json["bridge_lerobot"], ref)
    saved = json.loads(loader.dataset.statistics_paths["bridge_lerobot"].read_text())
    assert saved["statistics_from"] == "meta/stats.json"
    _, again = make_lerobot_loader(_config(folder, tmp_path / "from_json"))
    assert len(list((tmp_path / "from_json").glob("*.json"))) == 1


def test_av1_video_gives_the_rlds_batches_within_codec_error(converted, rlds_batches, tmp_path):
    expected, _ = rlds_batches
    folder = converted("video")
    info = json.loads((folder / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["features"]["observation.images.primary"]["info"]["video.codec"] == "av1"
    assert len(list(folder.glob("videos/observation.images.primary/chunk-000/file-*.mp4"))) >= 3
    got, _ = _batches(_config(folder, tmp_path))
    _assert_same(got, expected, images=False)
    every = [np.concatenate([b["images"] for b in x]).astype(np.float32) for x in (got, expected)]  # (F, C*N, S, S, 3)
    assert np.abs(every[0] - every[1]).mean(axis=(2, 3, 4)).max() < VIDEO_MEAN_ERROR  # the whole image history
    mine, theirs = (x[:, -len(ROLES) :][:, :2] for x in every)  # the current frame's cameras (F, 2, S, S, 3)
    error = np.abs(mine - theirs).mean(axis=(2, 3, 4))  # (F, 2)
    assert error.max() < VIDEO_MEAN_ERROR, error.max()
    # the decoded frames are nearer their own RLDS frames than the previous step's (bridge moves slowly
    # at 5 fps, so this holds over the pass, not for every frame; test_frames_at_episode_boundaries_... is exact)
    ids = _episode_ids(expected)
    within = [t for t in range(1, len(mine)) if ids[t] == ids[t - 1]]
    shifted = np.abs(mine[within] - theirs[[t - 1 for t in within]]).mean()
    assert error[within].mean() < 0.75 * shifted, (error[within].mean(), shifted)


def test_v21_folder_gives_the_v30_batches(tmp_path):
    """The same episodes written as v2.1 (one data file and one mp4 per episode) and v3.0 (shared files)."""
    rng = np.random.default_rng(0)
    episodes = [
        (
            rng.normal(size=(n, 3)),
            rng.normal(size=(n, 2)),
            f"task {i % 2}",
            [np.full((32, 32, 3), 8 * (i + t), np.uint8) for t in range(n)],
        )
        for i, n in enumerate([5, 7, 3, 6])
    ]
    folders = {}
    for version in ("v2.1", "v3.0"):
        with LeRobotWriter(
            tmp_path / version,
            fps=10,
            cameras=("observation.images.top",),
            version=version,
            codec_options=AV1,
            frames_per_data_file=8,
            frames_per_video_file=8,
        ) as writer:
            for state, action, task, frames in episodes:
                writer.add_episode(state, action, task, {"observation.images.top": frames})
        folders[version] = tmp_path / version
    assert (tmp_path / "v2.1" / "meta" / "episodes.jsonl").is_file()
    assert len(list((tmp_path / "v2.1").glob("videos/chunk-000/observation.images.top/episode_*.mp4"))) == 4
    assert len(list((tmp_path / "v3.0").glob("videos/observation.images.top/chunk-000/file-*.mp4"))) == 2  # 5+7, 3+6
    kwargs = dict(
        camera_roles=("primary",), image_size=32, cond_steps=2, horizon_steps=3, batch_size=4, normalization="mean_std"
    )
    v21, s21 = _batches(_config(folders["v2.1"], tmp_path / "s21", **kwargs))
    v30, s30 = _batches(_config(folders["v3.0"], tmp_path / "s30", **kwargs))
    assert [b["tfds_id"] for b in v21] == [[i.replace("v3.0", "v2.1") for i in b["tfds_id"]] for b in v30]
    _assert_same(v21, v30)
    gray = np.concatenate([b["images"][:, -1, :, :, 0].mean(axis=(1, 2)) for b in v21])  # the current frame
    np.testing.assert_allclose(gray, [8 * (i + t) for i, (s, *_) in enumerate(episodes) for t in range(len(s))], atol=2)
    state = np.concatenate([s for s, *_ in episodes])
    np.testing.assert_allclose(s21["v2.1"].proprio.mean, state.astype(np.float32).mean(0), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# video lookup at episode boundaries


def _index_frames(first: int, n: int, size: int = 32) -> list[np.ndarray]:
    """Frames whose gray level is 4 * their global index: a neighbour differs by 4 levels."""
    return [np.full((size, size, 3), 4 * (first + t) % 256, np.uint8) for t in range(n)]


def test_frames_at_episode_boundaries_of_a_multi_episode_video(tmp_path):
    lengths = [6, 1, 9, 4, 7]
    fps = 15
    with LeRobotWriter(
        tmp_path / "ds", fps=fps, cameras=("observation.images.cam",), codec_options=AV1, frames_per_video_file=15
    ) as writer:
        first = 0
        for n in lengths:
            writer.add_episode(
                np.zeros((n, 2)), np.zeros((n, 2)), "reach", {"observation.images.cam": _index_frames(first, n)}
            )
            first += n
    episodes = pq.read_table(next((tmp_path / "ds" / "meta" / "episodes").rglob("*.parquet"))).to_pylist()
    files = [
        (e["videos/observation.images.cam/file_index"], e["videos/observation.images.cam/from_timestamp"])
        for e in episodes
    ]
    assert files[0][0] == files[1][0] == files[2][0] and files[2][1] > 0  # three episodes share the first file
    videos = VideoFrames(1e-4)
    offsets = np.cumsum([0] + lengths)
    for e, n in enumerate(lengths):
        info = episodes[e]
        path = tmp_path / "ds" / "videos" / "observation.images.cam" / "chunk-000" / f"file-{files[e][0]:03d}.mp4"
        for t in sorted({0, n - 1}):  # the first and the last frame of every episode, in random-access order
            frame = videos.frame(
                VideoFrame(
                    str(path),
                    info["videos/observation.images.cam/from_timestamp"] + t / fps,
                    e,
                    "observation.images.cam",
                )
            )
            assert abs(float(frame.mean()) - 4 * (offsets[e] + t)) < 1.5, (e, t)
    # and through the loader: every frame's level is its global index
    cfg = _config(
        tmp_path / "ds",
        tmp_path / "stats",
        camera_roles=("primary",),
        image_size=32,
        batch_size=5,
        normalization="mean_std",
    )
    got, _ = _batches(cfg)
    levels = np.concatenate([b["images"].mean(axis=(2, 3, 4)) for b in got])  # (F, C): one camera, C = 3 frames
    steps = np.concatenate([b["step"] for b in got])
    frame = np.arange(sum(lengths))[:, None] + np.maximum(steps[:, None] + np.arange(-2, 1), 0) - steps[:, None]
    np.testing.assert_allclose(levels, 4 * frame, atol=1.5)  # t-2 .. t, the episode's first frame repeated
    mask = np.concatenate([b["image_mask"] for b in got])
    np.testing.assert_array_equal(mask, steps[:, None] + np.arange(-2, 1) >= 0)
    train, _ = make_lerobot_loader(LeRobotConfig(**{**cfg.__dict__, "train": True, "shuffle_buffer": 8}))
    batch = next(iter(train))  # random access (seeks), in the calling process
    steps = batch["step"].numpy()
    starts = {f"ds:{e}": offsets[e] for e in range(len(lengths))}
    expected = np.asarray([4 * (starts[i] + s) for i, s in zip(batch["tfds_id"], steps)])
    np.testing.assert_allclose(batch["images"][:, -1].float().mean(dim=(1, 2, 3)).numpy(), expected, atol=1.5)


# --------------------------------------------------------------------------------------------------
# errors name file and episode


def _small_folder(path: Path, video: bool = True) -> Path:
    with LeRobotWriter(path, fps=10, cameras=("observation.images.cam",), video=video, codec_options=AV1) as writer:
        for e in range(3):
            writer.add_episode(
                np.zeros((4, 2)), np.zeros((4, 2)), "push", {"observation.images.cam": _index_frames(4 * e, 4)}
            )
    return path


def test_error_missing_column(tmp_path):
    folder = _small_folder(tmp_path / "ds")
    data = next((folder / "data").rglob("*.parquet"))
    pq.write_table(pq.read_table(data).drop_columns(["observation.state"]), data)
    with pytest.raises(
        LeRobotDataError,
        match=r"file-000\.parquet, episode 0: column\(s\) \['observation.state'\] "
        r"missing",
    ):
        make_lerobot_loader(_config(folder, tmp_path / "stats", camera_roles=("primary",)))
    with pytest.raises(LeRobotDataError, match=r"info.json: no feature 'observation.joints'"):
        make_lerobot_loader(_config(folder, tmp_path / "stats", state_key="observation.joints"))


def test_error_missing_video_file(tmp_path):
    folder = _small_folder(tmp_path / "ds")
    video = next((folder / "videos").rglob("*.mp4"))
    video.unlink()
    with pytest.raises(
        LeRobotDataError,
        match=rf"{video}, episode 0: video file of camera 'observation.images.cam' "
        "is missing",
    ):
        make_lerobot_loader(_config(folder, tmp_path / "stats", camera_roles=("primary",)))


def test_error_timestamp_outside_the_video(tmp_path):
    folder = _small_folder(tmp_path / "ds")
    episodes = next((folder / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(episodes).to_pylist()
    table[2]["videos/observation.images.cam/from_timestamp"] += 0.5  # episode 2 runs past the file's end
    pq.write_table(pa.Table.from_pylist(table), episodes)
    video = next((folder / "videos").rglob("*.mp4"))
    cfg = _config(folder, tmp_path / "stats", camera_roles=("primary",), image_size=32, batch_size=4)
    loader, _ = make_lerobot_loader(cfg)
    outside = r"1\.300000 s is outside the video \(the last frame is at 1\.100000 s\)"
    with pytest.raises(
        LeRobotDataError,
        match=rf"{video}, episode 2: camera 'observation.images.cam': "
        rf"timestamp {outside}",
    ):
        list(loader)
    # a timestamp between frames, farther than the tolerance from both
    videos = VideoFrames(1e-4)
    with pytest.raises(
        LeRobotDataError,
        match=r"episode 1: camera 'c': no frame within 0.0001 s of 0\.450000 s "
        r"\(nearest frame at 0\.400000 s\)",
    ):
        videos.frame(VideoFrame(str(video), 0.45, 1, "c"))


# --------------------------------------------------------------------------------------------------
# mixes


def test_a_mix_of_folders_with_weights_and_padded_dims(tmp_path):
    for name, dims, level in (("a", (3, 2), 40), ("b", (5, 4), 200)):
        with LeRobotWriter(tmp_path / name, fps=10, cameras=("observation.image",), video=False) as writer:
            for e in range(4):
                buffer = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(buffer, "PNG")
                n = 6
                writer.add_episode(
                    np.ones((n, dims[0])) * e,
                    np.ones((n, dims[1])) * e,
                    f"{name} task",
                    {"observation.image": [buffer.getvalue()] * n},
                )
    cfg = _config(
        [tmp_path / "a", tmp_path / "b"],
        tmp_path / "stats",
        weights=[1.0, 3.0],
        train=True,
        camera_roles=("primary",),
        image_size=8,
        batch_size=400,
        shuffle_buffer=16,
    )
    loader, stats = make_lerobot_loader(cfg)
    assert sorted(stats) == ["a", "b"] and stats["a"].proprio.dim == 3 and stats["b"].action.dim == 4
    batch = next(iter(loader))
    index = batch["dataset_index"].numpy()
    assert 0.65 < index.mean() < 0.85  # 3/4 of the samples from b
    assert batch["proprio"].shape == (400, 3, 5) and batch["actions"].shape == (400, 4, 4)
    from_a = index == 0
    assert (batch["proprio"][from_a][..., 3:] == 0).all() and (batch["actions"][from_a][..., 2:] == 0).all()
    assert set(np.asarray(batch["language"])[from_a]) == {"a task"}
    assert (batch["images"][from_a].float().mean() - 40).abs() < 1 and (batch["images"][~from_a] == 200).all()


def test_the_run_config_data_section_builds_lerobot_loaders(tmp_path):
    """`data.source=lerobot` through `pg_vla.data.sources`: dims, training and validation loaders, action mask."""
    from omegaconf import OmegaConf

    from pg_vla.data.sources import action_mask, check_paths, dataset_dims, make_loader

    train, val = _small_folder(tmp_path / "train"), _small_folder(tmp_path / "val")
    data = OmegaConf.to_container(OmegaConf.load(REPO / "config" / "train" / "_train.yaml").data)
    data.update(
        source="lerobot",
        path=str(train),
        val_path=str(val),
        data_path=None,
        num_workers=0,
        statistics_dir=str(tmp_path / "stats"),
        mix="fractal",
        read_threads=1,
    )  # RLDS keys are ignored
    check_paths(data)
    with pytest.raises(FileNotFoundError, match="data.path .*missing does not exist"):
        check_paths({**data, "path": [str(train), str(tmp_path / "missing")]})
    assert dataset_dims(data) == (2, 2, ("primary",))
    assert action_mask(data, "train", 2) == [True, False]
    options = dict(batch_size=4, image_size=32, cond_steps=1, horizon_steps=2, seed=0)
    loader, stats = make_loader(data, **options)
    assert list(stats) == ["train"]
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 1, 32, 32, 3) and batch["actions"].shape == (4, 2, 2)
    loader, _ = make_loader(data, **options, validation=True, train_statistics=stats)
    assert sum(len(b["language"]) for b in loader) == 12 and loader.dataset.cfg.statistics_path
    with pytest.raises(ValueError, match="validation needs data.val_path"):
        make_loader({**data, "val_path": None}, **options, validation=True, train_statistics=stats)


def test_loader_cli_prints_statistics_and_throughput(tmp_path, monkeypatch, capsys):
    from pg_vla.data.lerobot import loader

    folder = _small_folder(tmp_path / "ds")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "loader.py",
            "--path",
            str(folder),
            "--batch_size",
            "2",
            "--num_batches",
            "2",
            "--image_size",
            "32",
            "--num_workers",
            "0",
            "--statistics_dir",
            str(tmp_path),
        ],
    )
    loader.main()
    out = capsys.readouterr().out.splitlines()
    assert Path(out[0]).is_file() and Path(out[0]).parent == tmp_path
    assert out[1].startswith("batch: {'images': ((2, 1, 32, 32, 3), 'torch.uint8')") and "frames/s" in out[-1]


def test_training_on_a_lerobot_folder(tmp_path, tiny_checkpoint_dir):
    """The trainer (in-process, tiny model) trains and validates on LeRobot folders, sized from their data."""
    from conftest import tiny_train_config

    from pg_vla.training.trainer import Trainer

    rng = np.random.default_rng(0)
    for name, episodes in (("train", 4), ("val", 2)):
        with LeRobotWriter(tmp_path / name, fps=10, cameras=("observation.images.cam",), codec_options=AV1) as writer:
            for e in range(episodes):
                writer.add_episode(
                    rng.uniform(-1, 1, (6, 5)),
                    rng.uniform(0, 1, (6, 4)),
                    f"stack block {e}",
                    {"observation.images.cam": _index_frames(6 * e, 6)},
                )
    data = {
        "source": "lerobot",
        "path": str(tmp_path / "train"),
        "val_path": str(tmp_path / "val"),
        "num_workers": 0,
        "shuffle_buffer": 16,
        "statistics_dir": str(tmp_path / "stats"),
    }
    cfg = tiny_train_config(
        tmp_path, tiny_checkpoint_dir, tmp_path / "run", n_updates=2, data=data, validation={"every": 2, "batches": 1}
    )
    trainer = Trainer(cfg)
    result = trainer.run()
    assert trainer.data_dims[:2] == (5, 4)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in log) and np.isfinite([r["loss"] for r in log if "loss" in r]).all(), result


# --------------------------------------------------------------------------------------------------
# memory


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from pg_vla.data.lerobot import LeRobotConfig, LeRobotWriter, make_lerobot_loader

    def rss_mib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

    folder, stats_dir = sys.argv[1], sys.argv[2]
    fps, seconds, size = 30, 600, 64
    n = fps * seconds  # a 10-minute episode: 18,000 frames, 221 MB of decoded RGB
    ramp = np.arange(size, dtype=np.int32)[None, :, None] * 2
    frames = (np.broadcast_to(((ramp + t) % 256).astype(np.uint8), (size, size, 3)) for t in range(n))
    start = time.perf_counter()
    with LeRobotWriter(folder, fps=fps, cameras=("observation.images.cam",),
                       codec_options={"preset": "12", "crf": "40", "g": "60", "svtav1-params": "lp=1"}) as writer:
        writer.add_episode(np.zeros((n, 2)), np.zeros((n, 2)), "wait", {"observation.images.cam": frames})
    encode_s = time.perf_counter() - start
    cfg = LeRobotConfig(path=folder, train=False, image_size=size, batch_size=64, num_workers=0,
                        normalization="mean_std", statistics_dir=stats_dir)
    loader, _ = make_lerobot_loader(cfg)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM): writing the video above must not count
    baseline = rss_mib("VmRSS")
    start, count, last = time.perf_counter(), 0, None
    for batch in loader:
        count += len(batch["language"])
        last = batch["images"][-1, 0, 0, :, 0].numpy()
    decode_s = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    print("REPORT " + json.dumps({"frames": count, "baseline_mib": baseline, "peak_mib": peak, "encode_s": encode_s,
                                  "decode_s": decode_s, "last_row": last.tolist()}), flush=True)
    """)


@pytest.mark.slow
def test_memory_is_bounded_decoding_a_ten_minute_video(tmp_path):
    script = tmp_path / "memory_check.py"
    script.write_text(MEMORY_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "long"), str(tmp_path / "stats")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads([line for line in result.stdout.splitlines() if line.startswith("REPORT ")][-1][7:])
    print(report)
    assert report["frames"] == 18_000
    expected_last = (np.arange(64) * 2 + 17_999) % 256  # the last frame's ramp
    assert np.abs(np.asarray(report["last_row"]) - expected_last).mean() < 8
    # one open decoder and a batch of frames at a time: far less than the 221 MB of the decoded video
    assert report["peak_mib"] - report["baseline_mib"] < 100, report
