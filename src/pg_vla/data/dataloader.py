"""Torch-side RLDS loading: the tf.data pipeline runs in a separate process, batches come back as tensors.

tensorflow never enters the training process: statistics are computed in a spawned helper process
and the pipeline runs inside a spawned DataLoader worker. This keeps the trainer safe from
tensorflow's import-order conflicts (tensorflow loaded before bitsandbytes aborts the process) and
keeps TF off the GPUs. Only JSON statistics and tensors cross the process boundary.

Batch layout (B batch, N cameras, S image size, C cond steps, P proprio dim, H horizon, A action dim):
    images         uint8 (B, C*N, S, S, 3)   frame-major views: [frame t-C+1: cameras in camera_roles
                                             order, ..., frame t: cameras], oldest frame first, the
                                             current frame last (C = 1: (B, N, ...), one frame); black
                                             where a camera is absent; before the episode start the
                                             episode's first frame repeated
    image_mask     bool  (B, C*N)            False for a camera the dataset lacks (in every frame) and for
                                             every view of a frame before the episode start
    proprio        float32 (B, C, P)         normalized; oldest first, the current step last
    proprio_mask   bool  (B, C)              False where the history reached before the episode start
    actions        float32 (B, H, A)         normalized chunk starting at the current step
    action_mask    bool  (B, H)              False where the chunk ran past the episode end (last action repeated)
    language       list[str] (B)
    step           int32 (B,)                step index within the (standardized) episode
    tfds_id        list[str] (B)             which episode ("<file>__<index>")
    dataset_index  int32 (B,)                position of the dataset in the mix
    scene_state    float32 (B, K)            only with `scene_state=True`: the current step's privileged scene
                                             state (simulated datasets), normalized; a training target only

Usage (computes or loads the statistics, prints each statistics JSON path on its own line, then
iterates a few batches and reports shapes and frames/s):
    uv run src/pg_vla/data/dataloader.py --data_path DIR --mix bridge [--batch_size 16] [--num_batches 20]
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from pg_vla.data.normalization import DatasetStatistics
from pg_vla.data.stream_checkpoint import StreamCheckpoints, check_restorable, checkpointed

SPAWN = multiprocessing.get_context("spawn")


class _Collect(logging.Handler):
    """Keeps the records of the helper process (as plain messages) for the parent to log."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info, record.exc_text = record.getMessage(), None, None, None
        self.records.append(record)


def _statistics_paths(rlds_kwargs: dict, level: int) -> tuple[dict[str, str], list[logging.LogRecord]]:
    """Runs in a spawned process: resolve the mix and compute or load each dataset's statistics; returns
    the paths and what pg_vla logged meanwhile (at the parent's level or above)."""
    from pg_vla.data.rlds.pipeline import RLDSConfig, prepare_mix

    handler, package = _Collect(), logging.getLogger("pg_vla")
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False  # logged once, by the parent (tensorflow may have given this process handlers)
    try:
        info = prepare_mix(RLDSConfig(**rlds_kwargs))
    except BaseException:
        for record in handler.records:  # nothing goes back with the error: say it here
            print(f"{record.levelname} {record.name}: {record.msg}", file=sys.stderr)
        raise
    finally:
        package.removeHandler(handler)
        package.propagate = True
    return {name: str(path) for name, path in info.statistics_paths.items()}, handler.records


def cached_statistics(rlds) -> dict[str, str] | None:
    """dataset name -> statistics JSON path when every dataset of the mix has its statistics fixed or
    already computed (found without tensorflow), else None."""
    from pg_vla.data.rlds.dataset_configs import get_dataset_config, get_mix
    from pg_vla.data.rlds.statistics import cached_statistics_file

    paths = {}
    for name in get_mix(rlds.mix):
        path = rlds.statistics_paths.get(name) or cached_statistics_file(
            rlds.data_path,
            get_dataset_config(name),
            split=rlds.statistics_split,
            skip_unlabeled=rlds.skip_unlabeled,
            statistics_dir=rlds.statistics_dir,
            skip_non_finite=rlds.skip_non_finite,
        )
        if path is None:
            return None
        paths[name] = str(path)
    return paths


def resolve_statistics(rlds) -> dict[str, str]:
    """dataset name -> statistics JSON path: the cached files when there are (`cached_statistics`), else
    computed (once) in a separate process, whose log records (e.g. "computing normalization statistics
    ...") are logged here."""
    cached = cached_statistics(rlds)
    if cached is not None:
        return cached
    level = logging.getLogger("pg_vla").getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        paths, records = pool.submit(_statistics_paths, asdict(rlds), level).result()
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    return paths


class RLDSBatches(IterableDataset):
    """Iterates batches of the tf.data pipeline; build it with `make_rlds_loader`."""

    def __init__(self, rlds, rank: int = 0, world_size: int = 1, checkpoints: StreamCheckpoints | None = None):
        self.rlds, self.rank, self.world_size = rlds, rank, world_size
        self.checkpoints = checkpoints if rlds.train else None

    def __iter__(self):
        from pg_vla.data.rlds.pipeline import RLDSBatchStream

        def open_stream(folder: Path | None) -> RLDSBatchStream:
            return RLDSBatchStream(self.rlds, self.rank, self.world_size, folder=folder)

        batches = checkpointed(open_stream, self.checkpoints, "rlds", 0, 1) if self.rlds.train else open_stream(None)
        for batch in batches:
            yield _to_torch(batch)


def _to_torch(batch: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def make_rlds_loader(
    rlds, rank: int = 0, world_size: int = 1, prefetch_batches: int = 4, checkpoints: StreamCheckpoints | None = None
) -> tuple[DataLoader, dict[str, DatasetStatistics]]:
    """A DataLoader over this rank's share of the mix, and the statistics it normalizes with.

    `rlds` is a `pg_vla.data.rlds.pipeline.RLDSConfig`; it may be built without importing tensorflow
    via `rlds_config(...)` below. A training loader writes and resumes its position as `checkpoints`
    says (`pg_vla.data.stream_checkpoint`; one worker).
    """
    if rlds.train:
        check_restorable(checkpoints, "rlds", 1)
    paths = {**resolve_statistics(rlds), **rlds.statistics_paths}
    rlds = replace(rlds, statistics_paths=paths)
    loader = DataLoader(
        RLDSBatches(rlds, rank, world_size, checkpoints),
        batch_size=None,
        num_workers=1,
        multiprocessing_context=SPAWN,
        persistent_workers=True,
        prefetch_factor=prefetch_batches,
    )
    return loader, {name: DatasetStatistics.load(path) for name, path in paths.items()}


def rlds_config(**kwargs):
    """RLDSConfig without importing tensorflow in this process (the config module is TF-free at build time)."""
    from pg_vla.data.rlds.config import RLDSConfig

    return RLDSConfig(**kwargs)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Compute/load normalization statistics of a mix and time the loader.")
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--mix", default="bridge")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--cond_steps", type=int, default=1)
    parser.add_argument("--horizon_steps", type=int, default=4)
    parser.add_argument("--shuffle_buffer", type=int, default=10_000)
    parser.add_argument("--read_threads", type=int, default=4)
    parser.add_argument("--transform_threads", type=int, default=4)
    parser.add_argument("--statistics_dir", default=None)
    args = parser.parse_args()
    rlds = rlds_config(
        data_path=args.data_path,
        mix=args.mix,
        split=args.split,
        batch_size=args.batch_size,
        image_size=args.image_size,
        cond_steps=args.cond_steps,
        horizon_steps=args.horizon_steps,
        shuffle_buffer=args.shuffle_buffer,
        read_threads=args.read_threads,
        transform_threads=args.transform_threads,
        statistics_dir=args.statistics_dir,
    )
    loader, stats = make_rlds_loader(rlds)
    for path in rlds_statistics_paths(loader).values():
        print(path)
    time_batches(loader, args.num_batches)


def time_batches(loader: DataLoader, num_batches: int) -> None:
    """Print the first batch's layout, then the throughput of the next `num_batches` (the first batch
    includes start-up: workers, pipeline, shuffle buffer fill)."""
    start, frames = None, 0
    for i, batch in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            print(
                "batch:",
                {
                    k: (tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else f"list[{len(v)}]"
                    for k, v in batch.items()
                },
                flush=True,
            )
        else:
            frames += len(batch["language"])
        if i == num_batches:
            break
    elapsed = time.perf_counter() - start
    print(f"{frames} frames in {elapsed:.2f} s after the first batch: {frames / elapsed:.1f} frames/s")


def rlds_statistics_paths(loader: DataLoader) -> dict[str, Path]:
    return {name: Path(path) for name, path in loader.dataset.rlds.statistics_paths.items()}


if __name__ == "__main__":
    main()
