"""Normalization statistics of a LeRobot folder in the project's JSON format (`DatasetStatistics`).

From meta/stats.json when it holds every statistic the format needs for the state and action
features (mean, std, min, max and the quantiles q01, q99 -> p01, p99; `num_transitions` = its count,
`num_trajectories` = the episodes) and `use_dataset_stats`; otherwise computed with the Parquet
source's definitions (`pg_vla.data.parquet.statistics`): every row of every episode, unlabeled episodes
(empty first task) left out when `skip_unlabeled`, `ArrayStatistics.from_values` over the float32
values. Either way the result is written once to a cache file named by a hash of the folder's files
(path, size, modification time), the feature mapping and the options, in the Parquet source's cache
folder (`statistics_dir`, else `pg_vla_statistics/` in the dataset folder when writable, else
$VLA_CACHE_DIR/statistics/parquet).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq

from pg_vla.data.lerobot.config import LeRobotConfig, LeRobotDataError
from pg_vla.data.lerobot.metadata import DatasetMeta
from pg_vla.data.normalization import ArrayStatistics, DatasetStatistics
from pg_vla.data.parquet.statistics import statistics_file

logger = logging.getLogger(__name__)
STATISTICS_VERSION = 1  # bump when the definitions change
LEROBOT_KEYS = {"mean": "mean", "std": "std", "min": "min", "max": "max", "p01": "q01", "p99": "q99"}


def statistics_key(cfg: LeRobotConfig, meta: DatasetMeta, from_stats_json: bool) -> str:
    files = sorted({e.data_file for e in meta.episodes}) + [meta.root / "meta" / "info.json"]
    if from_stats_json:
        files.append(meta.root / "meta" / "stats.json")
    payload = {
        "version": STATISTICS_VERSION,
        "state": cfg.state_key,
        "action": cfg.action_key,
        "skip_unlabeled": cfg.skip_unlabeled,
        "from_stats_json": from_stats_json,
        "files": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def from_stats_json(cfg: LeRobotConfig, meta: DatasetMeta) -> DatasetStatistics | None:
    """meta/stats.json in the project's format, or None when it is absent or lacks a statistic."""
    stats = meta.stats or {}
    arrays = {}
    for kind, key in (("action", cfg.action_key), ("proprio", cfg.state_key)):
        feature = stats.get(key, {})
        missing = [theirs for theirs in LEROBOT_KEYS.values() if theirs not in feature]
        if missing:
            if meta.stats is not None:
                logger.info("%s: meta/stats.json lacks %s of %r; computing the statistics", meta.name, missing, key)
            return None
        arrays[kind] = ArrayStatistics.from_dict(
            {ours: feature[theirs] for ours, theirs in LEROBOT_KEYS.items()}, f"{meta.root}/meta/stats.json[{key!r}]"
        )
    count = stats[cfg.action_key].get("count", [meta.num_frames])
    return DatasetStatistics(
        action=arrays["action"],
        proprio=arrays["proprio"],
        num_transitions=int(np.ravel(count)[0]),
        num_trajectories=len(meta.episodes),
    )


def compute_statistics(cfg: LeRobotConfig, meta: DatasetMeta) -> DatasetStatistics:
    """Over every row of every usable episode (images and videos are not read)."""
    states, actions, episodes = [], [], 0
    files: dict[Path, list[int]] = {}
    for episode in meta.episodes:
        files.setdefault(episode.data_file, []).append(episode.index)
    for path, wanted in files.items():
        table = pq.read_table(path, columns=[cfg.state_key, cfg.action_key, "episode_index", "task_index"])
        index = table.column("episode_index").to_numpy()
        tasks = table.column("task_index").to_numpy()
        keep = np.isin(index, wanted)
        if cfg.skip_unlabeled:
            for e in wanted:
                rows = np.flatnonzero(index == e)
                if len(rows) and not meta.tasks.get(int(tasks[rows[0]]), ""):
                    keep[rows] = False
        episodes += len(set(index[keep].tolist()))
        states.append(vectors(table, cfg.state_key, path)[keep])
        actions.append(vectors(table, cfg.action_key, path)[keep])
    if episodes == 0:
        raise ValueError(
            f"{meta.name}: no usable episode in {meta.root} (all unlabeled; set skip_unlabeled=False to use them)"
        )
    state, action = np.concatenate(states), np.concatenate(actions)
    return DatasetStatistics(
        action=ArrayStatistics.from_values(action),
        proprio=ArrayStatistics.from_values(state),
        num_transitions=len(action),
        num_trajectories=episodes,
    )


def vectors(table, column: str, path: Path) -> np.ndarray:
    """A list<float> column -> (n, D) float32."""
    array = table.column(column).combine_chunks()
    try:
        flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    except Exception as err:
        raise LeRobotDataError(str(path), f"column {column!r} is not a list of numbers ({array.type}): {err}") from err
    return flat.reshape(len(array), -1) if len(array) else flat.reshape(0, 0)


def load_or_compute_statistics(cfg: LeRobotConfig, meta: DatasetMeta) -> tuple[DatasetStatistics, Path]:
    """The fixed `statistics_path`, or the cached statistics of this folder (from stats.json or computed, once)."""
    if cfg.statistics_path:
        return DatasetStatistics.load(cfg.statistics_path), Path(cfg.statistics_path)
    stats = from_stats_json(cfg, meta) if cfg.use_dataset_stats else None
    key = statistics_key(cfg, meta, stats is not None)
    files = sorted({e.data_file for e in meta.episodes})
    where = SimpleNamespace(dataset_name=meta.name, statistics_dir=cfg.statistics_dir, paths=(str(meta.root),))
    path = statistics_file(where, files, key)
    if path.is_file():
        return DatasetStatistics.load(path), path
    source = "meta/stats.json"
    if stats is None:
        logger.info("computing normalization statistics of %s (%d episodes) -> %s", meta.name, len(meta.episodes), path)
        start, source = time.perf_counter(), "computed"
        stats = compute_statistics(cfg, meta)
        logger.info("computed normalization statistics of %s in %.1f s", meta.name, time.perf_counter() - start)
    stats.extra = {"dataset": meta.name, "source": "lerobot", "statistics_from": source, "statistics_key": key}
    stats.save(path)
    return stats, path
