"""Normalization statistics of a dataset's standardized steps: computed once, cached by config hash.

The cache key hashes the dataset config (keys, conventions, standardization), the split, the
`skip_unlabeled` choice and the split's size on disk, so a changed config or a rewritten dataset
gets a new file instead of reusing a stale one. Files go to `statistics_dir` when given, else next
to the data (`<data_path>/<name>/<version>/pg_vla_statistics/`) when that folder is writable, else
to `$VLA_CACHE_DIR/statistics` (default `~/.cache/pg_vla/statistics`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pg_vla.data.normalization import ArrayStatistics, DatasetStatistics
from pg_vla.data.rlds.dataset_configs import DatasetConfig


def statistics_key(cfg: DatasetConfig, split: str, skip_unlabeled: bool, split_info: dict) -> str:
    payload = json.dumps({"config": cfg.config_hash(), "split": split, "skip_unlabeled": skip_unlabeled,
                          "split_info": split_info}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def statistics_file(data_path: str | Path, cfg: DatasetConfig, split: str, key: str,
                    statistics_dir: str | Path | None) -> Path:
    from pg_vla.data.rlds.pipeline import dataset_folder, default_statistics_dir

    name = f"{cfg.name}_{split}_statistics_{key}.json"
    if statistics_dir is not None:
        return Path(statistics_dir) / name
    beside = dataset_folder(data_path, cfg) / "pg_vla_statistics"
    if os.access(beside if beside.exists() else beside.parent, os.W_OK):
        return beside / name
    return default_statistics_dir() / cfg.name / cfg.version / name


def compute_statistics(data_path: str | Path, cfg: DatasetConfig, split: str, skip_unlabeled: bool,
                       read_threads: int = 4) -> DatasetStatistics:
    """Statistics over every standardized step of `split` (images are dropped unread)."""
    from pg_vla.data.rlds.pipeline import open_builder, standardized_trajectories

    builder = open_builder(data_path, cfg)
    ds = standardized_trajectories(builder, cfg, split, skip_unlabeled=skip_unlabeled, shuffle=False,
                                   read_threads=read_threads, seed=0)
    ds = ds.map(lambda t: {"action": t["action"], "proprio": t["observation"]["proprio"]})
    import tensorflow as tf

    from pg_vla.data.rlds.pipeline import corrupt_data_error, dataset_folder, non_finite_data_error

    actions, proprios = [], []
    try:
        for traj in ds.as_numpy_iterator():
            actions.append(traj["action"])
            proprios.append(traj["proprio"])
    except tf.errors.DataLossError as err:
        raise corrupt_data_error(err, f"{cfg.name} ({dataset_folder(data_path, cfg)}, split {split!r})") from err
    except tf.errors.InvalidArgumentError as err:
        raise (non_finite_data_error(err) or err) from err
    if not actions:
        raise ValueError(f"{cfg.name} split {split!r} has no usable episodes (all empty or unlabeled)")
    action, proprio = np.concatenate(actions), np.concatenate(proprios)
    return DatasetStatistics(action=ArrayStatistics.from_values(action), proprio=ArrayStatistics.from_values(proprio),
                             num_transitions=len(action), num_trajectories=len(actions))


def load_or_compute_statistics(data_path: str | Path, cfg: DatasetConfig, split: str = "train",
                               skip_unlabeled: bool = True, statistics_dir: str | Path | None = None,
                               read_threads: int = 4) -> tuple[DatasetStatistics, Path]:
    from pg_vla.data.rlds.pipeline import open_builder

    builder = open_builder(data_path, cfg)
    if split not in builder.info.splits:
        raise ValueError(f"{cfg.name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    split_info = builder.info.splits[split]
    info = {"num_examples": int(split_info.num_examples), "num_bytes": int(split_info.num_bytes),
            "shard_lengths": [int(n) for n in split_info.shard_lengths]}
    key = statistics_key(cfg, split, skip_unlabeled, info)
    path = statistics_file(data_path, cfg, split, key, statistics_dir)
    if path.is_file():
        return DatasetStatistics.load(path), path
    stats = compute_statistics(data_path, cfg, split, skip_unlabeled, read_threads)
    stats.extra = {"dataset": cfg.name, "split": split, "statistics_key": key}
    return stats, stats.save(path)
