"""Normalization statistics of Parquet episodes, with the RLDS definitions, cached by content key.

Same definitions as `pg_vla.data.rlds.statistics`: every step (row) of every non-empty episode,
unlabeled episodes (empty first prompt) left out when `skip_unlabeled`, episodes holding NaN/inf left
out (and counted in `extra`) when `skip_non_finite`; `ArrayStatistics.from_values`
over the float32 values (float64 accumulation, numpy quantiles for p01/p99); `num_trajectories`
counts the episodes. Only the state, action and prompt columns are read, row group by row group.

The cache key hashes the files (resolved path, size, modification time), the column mapping,
`skip_unlabeled`, `skip_non_finite` and the expected dimensions, so a rewritten file gets a new
statistics file.
Files go to `statistics_dir` when given, else next to the data (`pg_vla_statistics/` in the
first path's folder) when writable, else to `$VLA_CACHE_DIR/statistics/parquet`.
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
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.parquet.files import (
    NAMED_SKIPS,
    ColumnPlan,
    FileIndex,
    iter_row_blocks,
    open_parquet,
    skipped_episodes,
)

logger = logging.getLogger(__name__)
STATISTICS_VERSION = 1  # bump when the definitions change


def statistics_key(cfg: ParquetConfig, files: list[Path]) -> str:
    payload = {
        "version": STATISTICS_VERSION,
        "columns": {k: cfg.column(k) for k in ("state", "action", "prompt")},
        "skip_unlabeled": cfg.skip_unlabeled,
        "state_dim": cfg.state_dim,
        "action_dim": cfg.action_dim,
        "files": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }
    if cfg.skip_non_finite:  # only when set, so the keys of earlier statistics stay valid
        payload["skip_non_finite"] = True
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def statistics_file(cfg: ParquetConfig, files: list[Path], key: str) -> Path:
    name = f"{cfg.dataset_name}_statistics_{key}.json"
    if cfg.statistics_dir is not None:
        return Path(cfg.statistics_dir) / name
    first = Path(cfg.paths[0]).expanduser()
    folder = first if first.is_dir() else files[0].parent
    beside = folder / "pg_vla_statistics"
    if os.access(beside if beside.exists() else folder, os.W_OK):
        return beside / name
    cache = Path(os.environ.get("VLA_CACHE_DIR", Path.home() / ".cache" / "pg_vla"))
    return cache / "statistics" / "parquet" / name


def compute_statistics(cfg: ParquetConfig, indexes: list[FileIndex], plans: list[ColumnPlan]) -> DatasetStatistics:
    """Statistics over every row of every usable episode (images are not read).

    The episodes in `FileIndex.non_finite` are left out; with `skip_non_finite` their number and
    the first few of them are in `extra` (`skipped_non_finite_episodes`, `skipped_non_finite_first`).
    """
    dims = {"state": cfg.state_dim, "action": cfg.action_dim}
    states, actions, episodes = [], [], 0
    for index, plan in zip(indexes, plans):
        parquet = open_parquet(Path(index.path))
        keep = np.ones(index.num_rows, bool)  # rows of usable episodes
        for e in index.non_finite:
            keep[index.starts[e] : index.starts[e + 1]] = False
        for block in iter_row_blocks(
            parquet, index, plan, 0, index.num_rows, dims, cfg.row_group_budget_bytes, with_images=False
        ):
            if cfg.skip_unlabeled:
                rows = np.arange(block.start, block.start + len(block))
                firsts = np.isin(rows, index.starts[:-1])
                for i in np.flatnonzero(firsts):
                    if not block.prompt[i]:
                        e = int(np.searchsorted(index.starts, rows[i]))
                        keep[index.starts[e] : index.starts[e + 1]] = False
            sel = keep[block.start : block.start + len(block)]
            states.append(block.state[sel])
            actions.append(block.action[sel])
        episodes += int(keep[index.starts[:-1]].sum())
    skipped = skipped_episodes(indexes)
    if episodes == 0:
        total = sum(i.num_episodes for i in indexes)
        why = (
            "all unlabeled; set skip_unlabeled=False to use them"
            if not skipped
            else f"all {total} hold NaN/inf values"
            if len(skipped) == total
            else f"{len(skipped)} of {total} hold NaN/inf values, the others are unlabeled"
        )
        raise ValueError(f"{cfg.dataset_name}: no usable episode in {[i.path for i in indexes]} ({why})")
    state, action = np.concatenate(states), np.concatenate(actions)
    extra = (
        {"skipped_non_finite_episodes": len(skipped), "skipped_non_finite_first": skipped[:NAMED_SKIPS]}
        if cfg.skip_non_finite
        else {}
    )
    return DatasetStatistics(
        action=ArrayStatistics.from_values(action),
        proprio=ArrayStatistics.from_values(state),
        num_transitions=len(action),
        num_trajectories=episodes,
        extra=extra,
    )


def load_or_compute_statistics(
    cfg: ParquetConfig, files: list[Path], indexes: list[FileIndex], plans: list[ColumnPlan]
) -> tuple[DatasetStatistics, Path]:
    """The fixed `statistics_path`, or the cached statistics of these files (computed once)."""
    if cfg.statistics_path:
        return DatasetStatistics.load(cfg.statistics_path), Path(cfg.statistics_path)
    key = statistics_key(cfg, files)
    path = statistics_file(cfg, files, key)
    if path.is_file():
        return DatasetStatistics.load(path), path
    logger.info("computing normalization statistics of %s (%d file(s)) -> %s", cfg.dataset_name, len(files), path)
    start = time.perf_counter()
    stats = compute_statistics(cfg, indexes, plans)
    stats.extra = {"dataset": cfg.dataset_name, "source": "parquet", "statistics_key": key, **stats.extra}
    stats.save(path)
    logger.info("computed normalization statistics of %s in %.1f s", cfg.dataset_name, time.perf_counter() - start)
    return stats, path
