"""NaN or inf in robot data is refused by name (file or dataset, episode, step) when statistics are computed and
when samples are read, in both loaders, so it never becomes a NaN model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pg_vla.data.normalization import ArrayStatistics


def _write_parquet(folder: Path, bad: tuple[int, int, int] | None) -> Path:
    """3 episodes of 8 steps (5-D state, 4-D actions); `bad` = (episode, step, dim) of one NaN action."""
    from pg_vla.data.parquet import ParquetEpisodeWriter

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="PNG")
    with ParquetEpisodeWriter(folder, rows_per_group=5) as writer:
        for episode in range(3):
            action = rng.normal(size=(8, 4))
            if bad is not None and bad[0] == episode:
                action[bad[1], bad[2]] = np.nan
            writer.add_episode([buffer.getvalue()] * 8, rng.normal(size=(8, 5)), action, "stack", episode_id=f"e{episode}")
    return folder


def test_parquet_nan_is_named_in_statistics_and_in_samples(tmp_path: Path) -> None:
    from pg_vla.data.parquet import ParquetConfig, make_parquet_loader
    from pg_vla.data.parquet.config import ParquetDataError

    data = _write_parquet(tmp_path / "bad", bad=(1, 3, 2))
    cfg = ParquetConfig(paths=(str(data),), image_size=16, batch_size=2, num_workers=0, train=False,
                        statistics_dir=str(tmp_path / "stats"))
    with pytest.raises(ParquetDataError, match=r"row 11, column 'action': non-finite value nan in dimension 2 "
                                               r"\(episode 1 of the file, step 3"):
        make_parquet_loader(cfg)
    assert not (tmp_path / "stats").exists() or not list((tmp_path / "stats").iterdir())  # nothing cached

    # with fixed statistics (computed on clean data) the samples themselves are refused
    clean = _write_parquet(tmp_path / "clean", bad=None)
    _, statistics = make_parquet_loader(ParquetConfig(paths=(str(clean),), image_size=16, num_workers=0, train=False,
                                                      statistics_dir=str(tmp_path / "clean_stats")))
    fixed = statistics["parquet"].save(tmp_path / "fixed.json")
    loader, _ = make_parquet_loader(ParquetConfig(paths=(str(data),), image_size=16, batch_size=2, num_workers=0,
                                                  train=False, statistics_path=str(fixed)))
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

    episodes = list(iter_bridge_episodes("train", 3, min_steps=6, max_steps=6, image_size=(16, 16),
                                         empty_language_fraction=0.0))
    # bridge's standardized action is the reached state's change: an inf state at step 4 makes action 3 inf
    episodes[2]["steps"][4]["observation"]["state"][1] = np.inf
    write_rlds_dataset(tmp_path, "bridge_dataset", "1.0.0", bridge_features((16, 16)), {"train": episodes},
                       shuffle=False)
    with pytest.raises(NonFiniteDataError, match=r"non-finite action value in bridge_dataset split train, "
                                                 r"episode .*train.* step 3"):
        load_or_compute_statistics(tmp_path, get_dataset_config("bridge_dataset"), "train",
                                   statistics_dir=tmp_path / "stats", read_threads=1)


def test_statistics_refuse_non_finite_values() -> None:
    values = np.zeros((4, 3))
    values[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite values: value nan at row 2, dimension 1"):
        ArrayStatistics.from_values(values)
