"""NaN or inf in robot data is refused by name (file or dataset, episode, step) when statistics are computed and
when samples are read, in both loaders, so it never becomes a NaN model. With `skip_non_finite` such episodes are
left out of both instead, counted in a warning and in the statistics JSON."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pg_vla.data.normalization import ArrayStatistics


def _parquet_episodes(bad: tuple[int, int, int] | None, count: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` episodes of 8 steps: (state (8, 5), action (8, 4)); `bad` = (episode, step, dim) of one NaN action."""
    rng = np.random.default_rng(0)
    episodes = []
    for episode in range(count):
        action = rng.normal(size=(8, 4))
        if bad is not None and bad[0] == episode:
            action[bad[1], bad[2]] = np.nan
        episodes.append((rng.normal(size=(8, 5)), action))
    return episodes


def _write_parquet(
    folder: Path,
    bad: tuple[int, int, int] | None,
    count: int = 3,
    keep: tuple[int, ...] | None = None,
    rows_per_group: int = 5,
) -> Path:
    """The episodes of `_parquet_episodes` (only those in `keep`, if given) in one file; 5-row groups hold the
    end of one episode and the start of the next."""
    from pg_vla.data.parquet import ParquetEpisodeWriter

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="PNG")
    with ParquetEpisodeWriter(folder, rows_per_group=rows_per_group) as writer:
        for episode, (state, action) in enumerate(_parquet_episodes(bad, count)):
            if keep is None or episode in keep:
                writer.add_episode([buffer.getvalue()] * 8, state, action, "stack", episode_id=f"e{episode}")
    return folder


def test_parquet_nan_is_named_in_statistics_and_in_samples(tmp_path: Path) -> None:
    from pg_vla.data.parquet import ParquetConfig, make_parquet_loader
    from pg_vla.data.parquet.config import ParquetDataError

    data = _write_parquet(tmp_path / "bad", bad=(1, 3, 2))
    cfg = ParquetConfig(
        paths=(str(data),),
        image_size=16,
        batch_size=2,
        num_workers=0,
        train=False,
        statistics_dir=str(tmp_path / "stats"),
    )
    with pytest.raises(
        ParquetDataError,
        match=r"row 11, column 'action': non-finite value nan in dimension 2 "
        r"\(episode 1 of the file, step 3",
    ):
        make_parquet_loader(cfg)
    assert not (tmp_path / "stats").exists() or not list((tmp_path / "stats").iterdir())  # nothing cached

    # with fixed statistics (computed on clean data) the samples themselves are refused
    clean = _write_parquet(tmp_path / "clean", bad=None)
    _, statistics = make_parquet_loader(
        ParquetConfig(
            paths=(str(clean),), image_size=16, num_workers=0, train=False, statistics_dir=str(tmp_path / "clean_stats")
        )
    )
    fixed = statistics["parquet"].save(tmp_path / "fixed.json")
    loader, _ = make_parquet_loader(
        ParquetConfig(
            paths=(str(data),), image_size=16, batch_size=2, num_workers=0, train=False, statistics_path=str(fixed)
        )
    )
    with pytest.raises(ParquetDataError, match=r"non-finite value nan in dimension 2 \(episode 1 of the file, step 3"):
        for _ in loader:
            pass


def test_rlds_nan_is_named_with_its_episode_and_step(tmp_path: Path) -> None:
    from pg_vla.data.rlds.dataset_configs import get_dataset_config
    from pg_vla.data.rlds.pipeline import NonFiniteDataError
    from pg_vla.data.rlds.schemas import bridge_features
    from pg_vla.data.rlds.statistics import load_or_compute_statistics
    from pg_vla.data.rlds.synthetic import iter_bridge_episodes
    from pg_vla.data.rlds.writer import write_rlds_dataset

    episodes = list(
        iter_bridge_episodes("train", 3, min_steps=6, max_steps=6, image_size=(16, 16), empty_language_fraction=0.0)
    )
    # bridge's standardized action is the reached state's change: an inf state at step 4 makes action 3 inf
    episodes[2]["steps"][4]["observation"]["state"][1] = np.inf
    write_rlds_dataset(
        tmp_path, "bridge_dataset", "1.0.0", bridge_features((16, 16)), {"train": episodes}, shuffle=False
    )
    with pytest.raises(
        NonFiniteDataError,
        match=r"non-finite action value in bridge_dataset split train, "
        r"episode .*train.* step 3",
    ):
        load_or_compute_statistics(
            tmp_path, get_dataset_config("bridge_dataset"), "train", statistics_dir=tmp_path / "stats", read_threads=1
        )


def test_statistics_refuse_non_finite_values() -> None:
    values = np.zeros((4, 3))
    values[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite values: value nan at row 2, dimension 1"):
        ArrayStatistics.from_values(values)


# --------------------------------------------------------------------------------------------------
# skip_non_finite: such episodes are left out of statistics and samples, and counted


def _numpy_statistics(values: np.ndarray) -> dict[str, np.ndarray]:
    v = np.asarray(values, np.float32).astype(np.float64)  # the loaders read float32
    return {
        "mean": v.mean(0),
        "std": v.std(0),
        "min": v.min(0),
        "max": v.max(0),
        "p01": np.quantile(v, 0.01, axis=0),
        "p99": np.quantile(v, 0.99, axis=0),
    }


def _assert_statistics(stats, action: np.ndarray, proprio: np.ndarray, trajectories: int) -> None:
    assert stats.num_trajectories == trajectories and stats.num_transitions == len(action)
    for kind, values in (("action", action), ("proprio", proprio)):
        for key, expected in _numpy_statistics(values).items():
            np.testing.assert_allclose(
                getattr(getattr(stats, kind), key), expected, rtol=1e-5, atol=1e-6, err_msg=f"{kind}/{key}"
            )


def _all_batches(loader) -> dict:
    batches = [{k: v.numpy() if hasattr(v, "numpy") else v for k, v in b.items()} for b in loader]
    return {
        k: (
            [x for b in batches for x in b[k]]
            if isinstance(batches[0][k], list)
            else np.concatenate([b[k] for b in batches])
        )
        for k in batches[0]
    }


@pytest.mark.parametrize("rows_per_group", [5, 32])
def test_parquet_skip_non_finite_leaves_the_episode_out_and_counts_it(
    tmp_path: Path, caplog, rows_per_group: int
) -> None:
    from pg_vla.data.parquet import ParquetConfig, make_parquet_loader
    from pg_vla.data.parquet.loader import ParquetSource
    from pg_vla.data.parquet.stream import rank_episodes

    # episode 1 of 4 (rows 8..15) has a NaN action. 5-row groups: it shares rows 5..9 with episode 0 and rows
    # 15..19 with episode 2; one 32-row group: the good episodes are read in one pass over the bad one's rows
    data = _write_parquet(tmp_path / "bad", bad=(1, 3, 2), count=4, rows_per_group=rows_per_group)
    base = dict(image_size=16, batch_size=3, num_workers=0, train=False, cond_steps=2, horizon_steps=3)
    cfg = ParquetConfig(paths=(str(data),), skip_non_finite=True, statistics_dir=str(tmp_path / "stats"), **base)
    with caplog.at_level(logging.WARNING):
        loader, statistics = make_parquet_loader(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 of 4 Parquet episodes" in warnings[0], warnings
    assert "episode 1 (rows 8..15)" in warnings[0] and "episodes-00000.parquet" in warnings[0]

    # statistics: numpy over the good episodes' values as written
    good = [e for i, e in enumerate(_parquet_episodes(None, 4)) if i != 1]
    _assert_statistics(
        statistics["parquet"],
        np.concatenate([a for _, a in good]),
        np.concatenate([s for s, _ in good]),
        trajectories=3,
    )
    saved = json.loads(Path(loader.dataset.statistics_path).read_text())
    assert saved["skipped_non_finite_episodes"] == 1
    first = saved["skipped_non_finite_first"]
    assert len(first) == 1 and "episode 1 (rows 8..15)" in first[0]

    # samples: only good episodes, every window as in a file holding the good episodes alone
    batch = _all_batches(loader)
    assert sorted(set(batch["tfds_id"])) == ["e0", "e2", "e3"] and len(batch["tfds_id"]) == 24
    assert np.isfinite(batch["proprio"]).all() and np.isfinite(batch["actions"]).all()
    fixed = tmp_path / "fixed.json"
    statistics["parquet"].save(fixed)
    clean = _write_parquet(tmp_path / "clean", bad=None, count=4, keep=(0, 2, 3))
    reference = _all_batches(
        make_parquet_loader(ParquetConfig(paths=(str(clean),), statistics_path=str(fixed), **base))[0]
    )
    for key in ("proprio", "proprio_mask", "actions", "action_mask", "step", "tfds_id"):
        np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(reference[key]), err_msg=key)

    # the training stream and rank shares leave it out too
    source = ParquetSource.open(cfg)
    assert [rank_episodes(source.indexes, r, 2) for r in (0, 1)] == [[(0, 0)], [(0, 2), (0, 3)]]
    train, _ = make_parquet_loader(
        ParquetConfig(**{**vars(cfg), "train": True, "shuffle_buffer": 4, "cycle_length": 2})
    )
    for _, b in zip(range(12), train):
        assert set(b["tfds_id"]) <= {"e0", "e2", "e3"} and bool(b["actions"].isfinite().all())

    # without the option the same data is refused (the default)
    with pytest.raises(ValueError, match="non-finite value nan"):
        make_parquet_loader(ParquetConfig(paths=(str(data),), statistics_dir=str(tmp_path / "stats"), **base))


def _bridge_episodes(count: int) -> list[dict]:
    """Synthetic bridge episodes of 6 raw steps, the gripper command 1 (open) throughout, so the standardized
    values are plain numpy: proprio = state[:-1], action = (state[1:, :6] - state[:-1, :6], 1)."""
    from pg_vla.data.rlds.synthetic import iter_bridge_episodes

    episodes = list(
        iter_bridge_episodes("train", count, min_steps=6, max_steps=6, image_size=(16, 16), empty_language_fraction=0.0)
    )
    for episode in episodes:
        for step in episode["steps"]:
            step["action"][6] = 1.0
    return episodes


def _bridge_reference(episode: dict) -> tuple[np.ndarray, np.ndarray]:
    state = np.stack([s["observation"]["state"] for s in episode["steps"]]).astype(np.float32)
    action = np.concatenate([state[1:, :6] - state[:-1, :6], np.ones((len(state) - 1, 1), np.float32)], axis=1)
    return state[:-1], action


def test_rlds_skip_non_finite_leaves_the_episode_out_and_counts_it(tmp_path: Path, caplog) -> None:
    from pg_vla.data.rlds.config import RLDSConfig
    from pg_vla.data.rlds.dataset_configs import get_dataset_config
    from pg_vla.data.rlds.pipeline import NonFiniteDataError, iterate_numpy_batches
    from pg_vla.data.rlds.schemas import bridge_features
    from pg_vla.data.rlds.statistics import load_or_compute_statistics
    from pg_vla.data.rlds.writer import write_rlds_dataset

    episodes = _bridge_episodes(4)
    good = [_bridge_reference(e) for i, e in enumerate(episodes) if i != 2]
    episodes[2]["steps"][4]["observation"]["state"][1] = np.inf
    write_rlds_dataset(
        tmp_path, "bridge_dataset", "1.0.0", bridge_features((16, 16)), {"train": episodes}, shuffle=False
    )
    cfg = get_dataset_config("bridge_dataset")
    with caplog.at_level(logging.WARNING):
        stats, path = load_or_compute_statistics(
            tmp_path, cfg, "train", statistics_dir=tmp_path / "stats", read_threads=1, skip_non_finite=True
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bridge_dataset split train: skipped 1 episode(s)" in warnings[0], warnings
    _assert_statistics(
        stats, np.concatenate([a for _, a in good]), np.concatenate([p for p, _ in good]), trajectories=3
    )
    saved = json.loads(path.read_text())
    assert saved["skipped_non_finite_episodes"] == 1
    [bad_id] = saved["skipped_non_finite_first"]
    assert bad_id in warnings[0]

    # the sample stream drops the same episode (and says so), every frame of the others comes
    rlds = RLDSConfig(
        data_path=str(tmp_path),
        mix="bridge",
        train=False,
        image_size=16,
        batch_size=8,
        read_threads=1,
        transform_threads=1,
        statistics_dir=str(tmp_path / "stats"),
        skip_non_finite=True,
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        batches = list(iterate_numpy_batches(rlds))
    ids = [i for b in batches for i in b["tfds_id"]]
    assert len(ids) == 3 * 5 and len(set(ids)) == 3 and bad_id not in ids
    assert all(np.isfinite(b["actions"]).all() and np.isfinite(b["proprio"]).all() for b in batches)
    assert any(bad_id in r.getMessage() and "skip_non_finite" in r.getMessage() for r in caplog.records)

    # the default still refuses the data
    with pytest.raises(NonFiniteDataError, match="skip_non_finite=true"):
        load_or_compute_statistics(tmp_path, cfg, "train", statistics_dir=tmp_path / "stats", read_threads=1)
