"""Training streams resume where they stopped without replaying: a loader continued from a saved position
gives the batches the uninterrupted loader gives (Parquet with 0 and 2 workers, RLDS on the real bridge
subset), and a trainer resumed from a checkpoint repeats an uninterrupted run's losses and weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pg_vla.data.stream_checkpoint import StreamCheckpoints, StreamRestoreError, staged_name

REAL_BRIDGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bridge_debug"


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """7 episodes of 5..12 steps (different lengths, so episodes end mid-batch), 2 row groups per file."""
    import io

    from PIL import Image

    from pg_vla.data.parquet import ParquetEpisodeWriter

    root = tmp_path_factory.mktemp("stream_episodes")
    rng = np.random.default_rng(3)
    for name, count in (("a", 4), ("b", 3)):
        with ParquetEpisodeWriter(root / name, rows_per_group=20) as writer:
            for episode in range(count):
                length = int(rng.integers(5, 13))
                frames = []
                for _ in range(length):
                    buffer = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
                    frames.append(buffer.getvalue())
                writer.add_episode(
                    frames,
                    rng.normal(size=(length, 2)),
                    rng.normal(size=(length, 2)),
                    "push",
                    episode_id=f"{name}{episode}",
                )
    return root


def _parquet_loader(episodes: Path, tmp: Path, workers: int, checkpoints: StreamCheckpoints):
    from pg_vla.data.parquet import ParquetConfig, make_parquet_loader

    cfg = ParquetConfig(
        paths=(str(episodes),),
        batch_size=4,
        image_size=8,
        cond_steps=2,
        horizon_steps=3,
        shuffle_buffer=10,
        cycle_length=2,
        num_workers=workers,
        statistics_dir=str(tmp / "stats"),
    )
    return make_parquet_loader(cfg, checkpoints=checkpoints)[0]


def _take(loader, n: int) -> list[dict]:
    out, it = [], iter(loader)
    for _ in range(n):
        out.append(next(it))
    return out


def _assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), f"batch {i} {key}"
            else:
                assert a[key] == b[key], f"batch {i} {key}"


@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_loader_continues_from_a_saved_position(episodes: Path, tmp_path: Path, workers: int) -> None:
    """Positions written after 7 batches (mid-epoch, mid-episode, the buffer full) and after 23 (in a later
    epoch; with 2 workers each reads its own units): loaders restored there give the same next batches as
    the uninterrupted one."""
    staging = tmp_path / "staging"
    plain = StreamCheckpoints(staging=str(staging), rank=3, every=23, final=7)
    batches = _take(_parquet_loader(episodes, tmp_path, workers, plain), 35)
    for start in (7, 23):
        folder = staging / staged_name(start) / "rank_3"
        assert sorted(p.name for p in folder.iterdir()) == [f"worker_{w}" for w in range(max(workers, 1))]
        resumed = StreamCheckpoints(
            staging=str(tmp_path / f"again_{start}"), rank=3, every=23, final=7, restore=str(folder), start=start
        )
        _assert_same_batches(_take(_parquet_loader(episodes, tmp_path, workers, resumed), 35 - start), batches[start:])
    # 140 frames: two epochs of the 70 rows, each in its own shuffled order, every episode in both
    names = [name for b in batches for name in b["tfds_id"]]
    assert len(set(names[:70])) == len(set(names[70:])) == 7 and names[:70] != names[70:]


def test_a_position_of_other_workers_is_refused(episodes: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    _take(_parquet_loader(episodes, tmp_path, 0, StreamCheckpoints(str(staging), 0, every=3, final=3)), 3)
    folder = staging / staged_name(3) / "rank_0"
    with pytest.raises(StreamRestoreError, match="1 worker.*2 worker"):
        _parquet_loader(
            episodes,
            tmp_path,
            2,
            StreamCheckpoints(str(tmp_path / "x"), 0, every=3, final=3, restore=str(folder), start=3),
        )
    with pytest.raises(StreamRestoreError, match="resumes after 4"):
        _parquet_loader(
            episodes,
            tmp_path,
            0,
            StreamCheckpoints(str(tmp_path / "x"), 0, every=3, final=3, restore=str(folder), start=4),
        )


@pytest.mark.skipif(not REAL_BRIDGE.is_dir(), reason="the bridge subset (../shared/data) is not on this machine")
def test_rlds_loader_continues_from_tf_data_iterator_checkpoint(tmp_path: Path) -> None:
    """The real BridgeData V2 subset, deterministic pipeline with a shuffle buffer and augmentation: the loader
    restored from the position written after 6 batches continues exactly like the uninterrupted one."""
    from pg_vla.data.dataloader import make_rlds_loader, rlds_config

    def loader(checkpoints):
        cfg = rlds_config(
            data_path=str(REAL_BRIDGE),
            mix="bridge",
            batch_size=8,
            image_size=32,
            cond_steps=2,
            horizon_steps=3,
            shuffle_buffer=50,
            read_threads=2,
            transform_threads=2,
            deterministic=True,
            statistics_dir=str(tmp_path / "stats"),
        )
        return make_rlds_loader(cfg, checkpoints=checkpoints)[0]

    staging = tmp_path / "staging"
    batches = _take(loader(StreamCheckpoints(str(staging), 0, every=6, final=6)), 40)  # 320 frames: over an epoch
    folder = staging / staged_name(6) / "rank_0"
    assert any(p.name.startswith("iterator") for p in (folder / "worker_0").iterdir())
    resumed = _take(
        loader(StreamCheckpoints(str(tmp_path / "again"), 0, every=6, final=6, restore=str(folder), start=6)), 34
    )
    _assert_same_batches(resumed, batches[6:])


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_resumed_trainer_repeats_the_uninterrupted_run(
    tiny_episodes: Path, tiny_checkpoint_dir: Path, tmp_path: Path
) -> None:
    """7 steps straight vs 3 steps, then a resume to 7: the same per-step losses and final weights (1e-6),
    the stream restored from the checkpoint's position (not replayed)."""
    from safetensors.torch import load_file

    from conftest import tiny_train_config
    from pg_vla.training.trainer import Trainer

    common = {
        "save_every": 3,
        "schedule": {"kind": "cosine", "warmup_steps": 1, "total_steps": 7},
        "data": {
            "source": "parquet",
            "paths": [str(tiny_episodes / "train")],
            "num_workers": 0,
            "shuffle_buffer": 6,
            "cycle_length": 2,
        },
    }
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    Trainer(tiny_train_config(tiny_episodes, tiny_checkpoint_dir, straight, n_updates=7, **common)).run()
    Trainer(tiny_train_config(tiny_episodes, tiny_checkpoint_dir, resumed, n_updates=3, **common)).run()
    assert (resumed / "checkpoints" / "step_000003" / "data_stream" / "rank_0" / "worker_0" / "state.json").is_file()
    Trainer(tiny_train_config(tiny_episodes, tiny_checkpoint_dir, resumed, n_updates=7, **common)).run()

    events = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [e["data_stream"] for e in events if e.get("event") == "resumed"] == ["restored"]
    want, got = _losses(straight), _losses(resumed)
    assert sorted(got) == list(range(1, 8))
    for step in range(1, 8):
        assert abs(got[step] - want[step]) <= 1e-6, (step, got[step], want[step])
    a = load_file(str(straight / "checkpoints" / "step_000007" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_000007" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
    assert not list((resumed / "checkpoints" / ".data_stream").iterdir())  # staged positions moved or pruned


def test_lerobot_mix_continues_from_a_saved_position(tmp_path: Path) -> None:
    """Two LeRobot folders mixed 1:3 (frames in the parquet), each with its own shuffle buffer: the loader
    restored from the position after 6 batches continues like the uninterrupted one."""
    import io

    from PIL import Image

    from pg_vla.data.lerobot import LeRobotConfig, LeRobotWriter, make_lerobot_loader

    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        with LeRobotWriter(tmp_path / name, fps=10, cameras=("observation.image",), video=False) as writer:
            for _ in range(4):
                n = int(rng.integers(4, 9))
                frames = []
                for _ in range(n):
                    buffer = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
                    frames.append(buffer.getvalue())
                writer.add_episode(
                    rng.normal(size=(n, 2)), rng.normal(size=(n, 2)), f"{name} task", {"observation.image": frames}
                )

    def loader(checkpoints):
        cfg = LeRobotConfig(
            path=[str(tmp_path / "a"), str(tmp_path / "b")],
            weights=[1.0, 3.0],
            camera_roles=("primary",),
            image_size=8,
            cond_steps=2,
            horizon_steps=3,
            batch_size=4,
            shuffle_buffer=12,
            num_workers=0,
            statistics_dir=str(tmp_path / "stats"),
        )
        return make_lerobot_loader(cfg, checkpoints=checkpoints)[0]

    staging = tmp_path / "staging"
    batches = _take(loader(StreamCheckpoints(str(staging), 0, every=6, final=6)), 20)
    restored = StreamCheckpoints(
        str(tmp_path / "again"), 0, every=6, final=6, restore=str(staging / staged_name(6) / "rank_0"), start=6
    )
    _assert_same_batches(_take(loader(restored), 14), batches[6:])
    assert {int(i) for b in batches for i in b["dataset_index"]} == {0, 1}
