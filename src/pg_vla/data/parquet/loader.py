"""Torch-side Parquet loading: the same batches, keys and dtypes as `pg_vla.data.dataloader.make_rlds_loader`.

Batches have the layout documented in `pg_vla.data.dataloader` (same keys, dtypes and shapes); only
`tfds_id` differs in content (the episode's `episode_id`, else "<file name>:<first row>") and
`dataset_index` is always 0 (one dataset).

No tensorflow anywhere: the reader runs in spawned DataLoader workers (`num_workers`, default 1)
or in the calling process (`num_workers=0`). The file index (the `is_first` column of every file)
and the statistics are computed in the calling process before the loader is returned.

Usage (indexes the files, computes or loads the statistics, prints the statistics JSON path, then
times a few batches):
    uv run src/pg_vla/data/parquet/loader.py --paths DIR_OR_FILES... [--batch_size 16] [--num_batches 20]
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pg_vla.data.normalization import DatasetStatistics, Normalizer, action_normalization_mask
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.parquet.files import NAMED_SKIPS, ColumnPlan, FileIndex, index_file, resolve_files, skipped_episodes
from pg_vla.data.parquet.frames import batched
from pg_vla.data.parquet.statistics import load_or_compute_statistics
from pg_vla.data.parquet.stream import (
    EpisodeReader,
    ReadUnit,
    TrainingBatches,
    ordered_frames,
    rank_episodes,
    read_units,
)
from pg_vla.data.stream_checkpoint import StreamCheckpoints, check_restorable, checkpointed, logical_worker

SPAWN = multiprocessing.get_context("spawn")
logger = logging.getLogger(__name__)


@dataclass
class ParquetSource:
    """The files of a config, indexed: what every rank and worker shares.

    With `skip_non_finite` the index lists each file's episodes holding NaN/inf state or action
    values; statistics and samples leave them out, and opening warns how many (and which).
    """

    files: list[Path]
    indexes: list[FileIndex]
    plans: list[ColumnPlan]

    @classmethod
    def open(cls, cfg: ParquetConfig) -> "ParquetSource":
        files = resolve_files(cfg.paths)
        indexed = [index_file(f, cfg) for f in files]
        source = cls(files, [i for i, _ in indexed], [p for _, p in indexed])
        skipped = skipped_episodes(source.indexes)
        if skipped:
            more = f"; and {len(skipped) - NAMED_SKIPS} more" if len(skipped) > NAMED_SKIPS else ""
            logger.warning(
                "%s: skipped %d of %d Parquet episodes holding NaN/inf state or action values "
                "(skip_non_finite=true; left out of the statistics and the samples): %s%s",
                cfg.dataset_name,
                len(skipped),
                source.num_episodes,
                "; ".join(skipped[:NAMED_SKIPS]),
                more,
            )
        return source

    @property
    def num_episodes(self) -> int:
        return sum(i.num_episodes for i in self.indexes)


class ParquetBatches(IterableDataset):
    """Iterates batches of this rank's episodes; build it with `make_parquet_loader`."""

    def __init__(
        self,
        cfg: ParquetConfig,
        source: ParquetSource,
        statistics: DatasetStatistics,
        statistics_path: Path,
        rank: int = 0,
        world_size: int = 1,
        checkpoints: StreamCheckpoints | None = None,
    ):
        self.cfg, self.source, self.statistics = cfg, source, statistics
        self.statistics_path = statistics_path
        self.rank, self.world_size = rank, world_size
        self.checkpoints = checkpoints if cfg.train else None
        self.units: list[ReadUnit] = read_units(source.indexes, rank_episodes(source.indexes, rank, world_size))

    def reader(self) -> EpisodeReader:
        cfg, stats = self.cfg, self.statistics
        action_mask = action_normalization_mask(stats.action.dim, cfg.normalize_gripper, cfg.gripper_dims)
        return EpisodeReader(
            cfg,
            self.source.indexes,
            self.source.plans,
            Normalizer(stats.proprio, cfg.normalization),
            Normalizer(stats.action, cfg.normalization, action_mask),
            {"state": cfg.state_dim or stats.proprio.dim, "action": cfg.action_dim or stats.action.dim},
        )

    def numpy_batches(self):
        """Numpy batches (no torch), this worker's share."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = logical_worker(worker, workers, self.checkpoints)
        units = self.units[worker::workers]
        cfg = self.cfg
        seed = cfg.seed + 1000 * self.rank + 100_003 * worker
        if cfg.train:
            where = f"rank {self.rank} worker {worker} of {len(self.source.files)} Parquet file(s)"
            if not units:
                raise ValueError(f"{where}: no episodes assigned (fewer read units than workers)")
            reader = self.reader()
            return checkpointed(
                lambda folder: TrainingBatches(reader, units, cfg, seed, where, folder),
                self.checkpoints,
                "parquet",
                worker,
                workers,
            )
        frames = ordered_frames(self.reader(), units)
        return batched(frames, cfg.batch_size, cfg.image_size, drop_remainder=False, image_resize=cfg.image_resize)

    def __iter__(self):
        for batch in self.numpy_batches():
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def make_parquet_loader(
    cfg: ParquetConfig, rank: int = 0, world_size: int = 1, checkpoints: StreamCheckpoints | None = None
) -> tuple[DataLoader, dict[str, DatasetStatistics]]:
    """A DataLoader over this rank's share of the episodes, and the statistics it normalizes with.

    Mirrors `make_rlds_loader`: the dict maps `cfg.dataset_name` to its statistics; the JSON path
    is `loader.dataset.statistics_path`. An ordered pass (`train=False`) uses at most one worker,
    so batches come in file order. A training loader writes and resumes its position as
    `checkpoints` says (`pg_vla.data.stream_checkpoint`).
    """
    source = ParquetSource.open(cfg)
    statistics, path = load_or_compute_statistics(cfg, source.files, source.indexes, source.plans)
    workers = cfg.num_workers if cfg.train else min(cfg.num_workers, 1)
    if cfg.train:
        check_restorable(checkpoints, "parquet", max(workers, 1))
    dataset = ParquetBatches(cfg, source, statistics, path, rank, world_size, checkpoints)
    extra = (
        dict(multiprocessing_context=SPAWN, persistent_workers=True, prefetch_factor=cfg.prefetch_batches)
        if workers
        else {}
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, **extra)
    return loader, {cfg.dataset_name: statistics}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Index Parquet episodes, compute/load statistics, time the loader.")
    parser.add_argument("--paths", nargs="+", required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--cond_steps", type=int, default=1)
    parser.add_argument("--horizon_steps", type=int, default=4)
    parser.add_argument("--shuffle_buffer", type=int, default=10_000)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--image_2_role", default="wrist")
    parser.add_argument("--statistics_dir", default=None)
    args = parser.parse_args()
    cfg = ParquetConfig(
        paths=tuple(args.paths),
        batch_size=args.batch_size,
        image_size=args.image_size,
        cond_steps=args.cond_steps,
        horizon_steps=args.horizon_steps,
        shuffle_buffer=args.shuffle_buffer,
        num_workers=args.num_workers,
        image_2_role=None if args.image_2_role == "none" else args.image_2_role,
        statistics_dir=args.statistics_dir,
    )
    loader, _ = make_parquet_loader(cfg)
    print(loader.dataset.statistics_path)
    from pg_vla.data.dataloader import time_batches

    time_batches(loader, args.num_batches)


if __name__ == "__main__":
    main()
