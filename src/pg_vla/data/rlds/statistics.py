"""Normalization statistics of a dataset's standardized steps: computed once, cached by config hash.

The cache key hashes the dataset config (keys, conventions, standardization), the split, the
`skip_unlabeled` and `skip_non_finite` choices and the split's size on disk, so a changed config or a
rewritten dataset gets a new file instead of reusing a stale one. Files go to `statistics_dir` when
given, else next to the data (`<data_path>/<name>/<version>/pg_vla_statistics/`) when that folder is
writable, else to `$VLA_CACHE_DIR/statistics` (default `~/.cache/pg_vla/statistics`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from pg_vla.data.normalization import ArrayStatistics, DatasetStatistics
from pg_vla.data.rlds.dataset_configs import DatasetConfig, dataset_folder

logger = logging.getLogger(__name__)


def statistics_key(
    cfg: DatasetConfig, split: str, skip_unlabeled: bool, split_info: dict, skip_non_finite: bool = False
) -> str:
    payload = {"config": cfg.config_hash(), "split": split, "skip_unlabeled": skip_unlabeled, "split_info": split_info}
    if skip_non_finite:  # only when set, so the keys of earlier statistics stay valid
        payload["skip_non_finite"] = True
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_statistics_dir() -> Path:
    return Path(os.environ.get("VLA_CACHE_DIR", Path.home() / ".cache" / "pg_vla")) / "statistics"


def split_info(data_path: str | Path, cfg: DatasetConfig, split: str) -> dict | None:
    """Size of `split` on disk as the cache key hashes it, read from the dataset's `dataset_info.json`
    (no tensorflow); None when the file or the split is missing."""
    info_file = dataset_folder(data_path, cfg) / "dataset_info.json"
    try:
        splits = {s["name"]: s for s in json.loads(info_file.read_text()).get("splits", [])}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if split not in splits:
        return None
    shard_lengths = [int(n) for n in splits[split].get("shardLengths", [])]
    return {
        "num_examples": sum(shard_lengths),
        "num_bytes": int(splits[split].get("numBytes", 0)),
        "shard_lengths": shard_lengths,
    }


def cached_statistics_file(
    data_path: str | Path,
    cfg: DatasetConfig,
    split: str = "train",
    skip_unlabeled: bool = True,
    statistics_dir: str | Path | None = None,
    skip_non_finite: bool = False,
) -> Path | None:
    """The statistics file already computed for this dataset, config and split, else None (no tensorflow)."""
    keyed = _keyed_statistics_file(data_path, cfg, split, skip_unlabeled, statistics_dir, skip_non_finite)
    return keyed[1] if keyed is not None and keyed[1].is_file() else None


def _keyed_statistics_file(
    data_path: str | Path,
    cfg: DatasetConfig,
    split: str,
    skip_unlabeled: bool,
    statistics_dir: str | Path | None,
    skip_non_finite: bool,
) -> tuple[str, Path] | None:
    """(cache key, where its statistics file goes) of a split, else None when the split is not on disk."""
    info = split_info(data_path, cfg, split)
    if info is None:
        return None
    key = statistics_key(cfg, split, skip_unlabeled, info, skip_non_finite)
    return key, statistics_file(data_path, cfg, split, key, statistics_dir)


def _writable(folder: Path) -> bool:
    """Writable and not marked read-only (root may write anywhere; a folder without write bits is left alone)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def statistics_file(
    data_path: str | Path, cfg: DatasetConfig, split: str, key: str, statistics_dir: str | Path | None
) -> Path:
    name = f"{cfg.name}_{split}_statistics_{key}.json"
    if statistics_dir is not None:
        return Path(statistics_dir) / name
    beside = dataset_folder(data_path, cfg) / "pg_vla_statistics"
    if _writable(beside if beside.exists() else beside.parent):
        return beside / name
    return default_statistics_dir() / cfg.name / cfg.version / name


def compute_statistics(
    data_path: str | Path,
    cfg: DatasetConfig,
    split: str,
    skip_unlabeled: bool,
    read_threads: int = 4,
    skip_non_finite: bool = False,
) -> DatasetStatistics:
    """Statistics over every standardized step of `split` (images are dropped unread).

    NaN/inf in an action or proprio raises NonFiniteDataError, unless `skip_non_finite`: then such
    episodes are left out, in the same order as the training stream drops them (before unlabeled
    ones), warned about, and counted in `extra` (`skipped_non_finite_episodes`, and the first few
    tfds ids in `skipped_non_finite_first`).
    """
    import tensorflow as tf

    from pg_vla.data.rlds.pipeline import (
        NAMED_SKIPS,
        corrupt_data_error,
        non_finite_data_error,
        open_builder,
        standardized_trajectories,
    )

    builder = open_builder(data_path, cfg, camera_roles=())  # statistics read no image
    # skipping: every non-empty trajectory comes as it is; non-finite, then unlabeled ones are dropped below
    ds = standardized_trajectories(
        builder,
        cfg,
        split,
        skip_unlabeled=skip_unlabeled and not skip_non_finite,
        shuffle=False,
        read_threads=read_threads,
        seed=0,
        non_finite="keep" if skip_non_finite else "raise",
    )
    ds = ds.map(
        lambda t: {
            "action": t["action"],
            "proprio": t["observation"]["proprio"],
            **({"scene_state": t["observation"]["scene_state"]} if cfg.scene_state_key is not None else {}),
            "tfds_id": t["tfds_id"],
            "labeled": tf.strings.length(t["language_instruction"][0]) > 0,
        }
    )

    actions, proprios, scenes, skipped = [], [], [], []
    try:
        for traj in ds.as_numpy_iterator():
            if skip_non_finite and not (np.isfinite(traj["action"]).all() and np.isfinite(traj["proprio"]).all()):
                skipped.append(traj["tfds_id"].decode())
                continue
            if skip_unlabeled and not traj["labeled"]:
                continue
            actions.append(traj["action"])
            proprios.append(traj["proprio"])
            if "scene_state" in traj:
                scenes.append(traj["scene_state"])
    except tf.errors.DataLossError as err:
        raise corrupt_data_error(err, f"{cfg.name} ({dataset_folder(data_path, cfg)}, split {split!r})") from err
    except tf.errors.InvalidArgumentError as err:
        raise (non_finite_data_error(err) or err) from err
    extra = {}
    if skip_non_finite:
        extra = {"skipped_non_finite_episodes": len(skipped), "skipped_non_finite_first": skipped[:NAMED_SKIPS]}
        if skipped:
            more = f", and {len(skipped) - NAMED_SKIPS} more" if len(skipped) > NAMED_SKIPS else ""
            logger.warning(
                "%s split %s: skipped %d episode(s) holding NaN/inf action or proprio values "
                "(skip_non_finite=true; left out of the statistics and of training): %s%s",
                cfg.name,
                split,
                len(skipped),
                ", ".join(skipped[:NAMED_SKIPS]),
                more,
            )
    if not actions:
        non_finite = f", {len(skipped)} with NaN/inf values" if skipped else ""
        raise ValueError(f"{cfg.name} split {split!r} has no usable episodes (all empty or unlabeled{non_finite})")
    action, proprio = np.concatenate(actions), np.concatenate(proprios)
    return DatasetStatistics(
        action=ArrayStatistics.from_values(action),
        proprio=ArrayStatistics.from_values(proprio),
        num_transitions=len(action),
        num_trajectories=len(actions),
        extra=extra,
        scene_state=ArrayStatistics.from_values(np.concatenate(scenes)) if scenes else None,
    )


def load_or_compute_statistics(
    data_path: str | Path,
    cfg: DatasetConfig,
    split: str = "train",
    skip_unlabeled: bool = True,
    statistics_dir: str | Path | None = None,
    read_threads: int = 4,
    skip_non_finite: bool = False,
) -> tuple[DatasetStatistics, Path]:
    from pg_vla.data.rlds.pipeline import open_builder

    builder = open_builder(data_path, cfg, camera_roles=())  # statistics read no image
    keyed = _keyed_statistics_file(data_path, cfg, split, skip_unlabeled, statistics_dir, skip_non_finite)
    if split not in builder.info.splits or keyed is None:
        raise ValueError(f"{cfg.name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    key, path = keyed
    if path.is_file():
        return DatasetStatistics.load(path), path
    logger.info("computing normalization statistics of %s split %s -> %s", cfg.name, split, path)
    start = time.perf_counter()
    stats = compute_statistics(data_path, cfg, split, skip_unlabeled, read_threads, skip_non_finite)
    stats.extra = {"dataset": cfg.name, "split": split, "statistics_key": key, **stats.extra}
    stats.save(path)
    logger.info(
        "computed normalization statistics of %s split %s in %.1f s", cfg.name, split, time.perf_counter() - start
    )
    return stats, path
