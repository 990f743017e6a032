"""Torch-side LeRobot loading: the batch layout of `pg_vla.data.dataloader` from LeRobot dataset folders.

Batches have the layout documented in `pg_vla.data.dataloader` (same keys, dtypes and shapes); `tfds_id`
is "<folder name>:<episode_index>" and `dataset_index` the folder's position in `path`. State and action
of a mix are zero-padded to the largest dims after normalization, as the RLDS mixes are.

Rows become frames with the Parquet source's window code (`pg_vla.data.parquet.frames`: cond_steps of
state and image history, horizon_steps of actions, padded and masked at episode ends) and are interleaved and
shuffled by its stream code (`pg_vla.data.parquet.stream`); a frame holds its images still encoded
(images in the parquet) or as `VideoFrame` references, decoded only when its batch is made, in the
DataLoader worker (`num_workers`, spawned) or the calling process (`num_workers=0`). The metadata, the
file checks and the statistics are done in the calling process before the loader is returned.

Usage (opens the folder(s), computes or loads the statistics, prints each statistics JSON path, then
times a few batches):
    uv run src/pg_vla/data/lerobot/loader.py --path DIR [DIR...] [--batch_size 16] [--num_batches 20]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pg_vla.data.lerobot.config import LeRobotConfig, LeRobotDataError
from pg_vla.data.lerobot.metadata import DatasetMeta, camera_features, check_files, check_videos, read_metadata
from pg_vla.data.lerobot.statistics import load_or_compute_statistics, vectors
from pg_vla.data.lerobot.video import VideoFrame, VideoFrames
from pg_vla.data.normalization import DatasetStatistics, Normalizer, action_normalization_mask
from pg_vla.data.parquet.frames import Episode, Frame, ShuffleBuffer, episode_frames, make_batch
from pg_vla.data.parquet.images import (
    ImageDecodeError,
    decode_and_resize,
    resize_like_tensorflow,
    resize_with_pad_like_tensorflow,
)
from pg_vla.data.parquet.stream import TrainingFrames
from pg_vla.data.stream_checkpoint import StreamCheckpoints, check_restorable, checkpointed, logical_worker

SPAWN = multiprocessing.get_context("spawn")
logger = logging.getLogger(__name__)


@dataclass
class Folder:
    """One dataset folder of the mix, opened: metadata, the camera mapping, where each episode's rows are."""

    meta: DatasetMeta
    roles: dict[str, str | None]  # batch camera role -> camera feature key
    rows: list[tuple[int, int]]  # per episode (position in meta.episodes): rows lo..hi-1 of its data file
    statistics: DatasetStatistics
    statistics_path: Path

    @property
    def name(self) -> str:
        return self.meta.name


def _names(paths: tuple[str, ...]) -> list[str]:
    """Statistics keys: the folder names, made unique with a suffix where two folders share a name."""
    names = [Path(p).expanduser().resolve().name for p in paths]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def open_folder(cfg: LeRobotConfig, path: str, name: str) -> Folder:
    meta = read_metadata(path, name)
    for key in (cfg.state_key, cfg.action_key):
        if key not in meta.features:
            raise LeRobotDataError(
                str(meta.root / "meta" / "info.json"), f"no feature {key!r}; features: {sorted(meta.features)}"
            )
    roles = camera_features(meta, cfg)
    cameras = [k for k in roles.values() if k is not None]
    check_files(
        meta,
        [
            cfg.state_key,
            cfg.action_key,
            "episode_index",
            "task_index",
            "timestamp",
            *[k for k in cameras if not meta.is_video(k)],
        ],
    )
    check_videos(meta, [k for k in cameras if meta.is_video(k)])
    rows = _episode_rows(meta)
    statistics, statistics_path = load_or_compute_statistics(cfg, meta)
    return Folder(meta, roles, rows, statistics, statistics_path)


def _episode_rows(meta: DatasetMeta) -> list[tuple[int, int]]:
    """Rows of each episode in its data file, from the file's episode_index column (contiguous, as written)."""
    found: dict[Path, dict[int, tuple[int, int]]] = {}
    out = []
    for episode in meta.episodes:
        if episode.data_file not in found:
            index = pq.read_table(episode.data_file, columns=["episode_index"]).column(0).to_numpy()
            starts = np.flatnonzero(np.diff(index, prepend=index[:1] - 1))
            ends = np.append(starts[1:], len(index))
            found[episode.data_file] = {int(index[s]): (int(s), int(e)) for s, e in zip(starts, ends)}
        lo_hi = found[episode.data_file].get(episode.index)
        if lo_hi is None:
            raise LeRobotDataError(str(episode.data_file), "the data file holds no rows of this episode", episode.index)
        if lo_hi[1] - lo_hi[0] != episode.length:
            raise LeRobotDataError(
                str(episode.data_file),
                f"{lo_hi[1] - lo_hi[0]} rows, the episode metadata says {episode.length}",
                episode.index,
            )
        out.append(lo_hi)
    return out


class FolderReader:
    """Reads one folder's episodes into frames (the `frame_lists(unit)` of the Parquet stream, a unit being
    an episode's position in the folder's metadata)."""

    def __init__(self, cfg: LeRobotConfig, folder: Folder, dims: tuple[int, int]):
        self.cfg, self.folder, self.dims = cfg, folder, dims
        stats = folder.statistics
        mask = action_normalization_mask(stats.action.dim, cfg.normalize_gripper, cfg.gripper_dims)
        self.proprio_norm = Normalizer(stats.proprio, cfg.normalization)
        self.action_norm = Normalizer(stats.action, cfg.normalization, mask)
        self.own_dims = (stats.proprio.dim, stats.action.dim)

    def episode(self, position: int) -> Episode:
        cfg, meta = self.cfg, self.folder.meta
        info = meta.episodes[position]
        lo, hi = self.folder.rows[position]
        cameras = [k for k in self.folder.roles.values() if k is not None]
        stored = [k for k in cameras if not meta.is_video(k)]
        file = pq.ParquetFile(info.data_file)
        starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)])
        groups = [g for g in range(len(starts) - 1) if starts[g] < hi and starts[g + 1] > lo]
        table = file.read_row_groups(
            groups, columns=[cfg.state_key, cfg.action_key, "task_index", "timestamp", *stored]
        )
        table = table.slice(lo - int(starts[groups[0]]), hi - lo)
        where = str(info.data_file)
        state, action = vectors(table, cfg.state_key, where), vectors(table, cfg.action_key, where)
        for key, values, dim in ((cfg.state_key, state, cfg.state_dim), (cfg.action_key, action, cfg.action_dim)):
            expected = dim or meta.dim(key)
            if values.shape[1] != expected:
                raise LeRobotDataError(
                    where, f"column {key!r} has {values.shape[1]} values per row, expected {expected}", info.index
                )
            if not np.isfinite(values).all():
                raise LeRobotDataError(where, f"column {key!r} holds NaN/inf values", info.index)
        tasks = table.column("task_index").to_pylist()
        timestamps = table.column("timestamp").to_numpy()
        images: dict[str, list] = {}
        for key in stored:
            column = table.column(key).combine_chunks()
            encoded = column.field("bytes").to_pylist() if hasattr(column, "field") else column.to_pylist()
            if any(b is None for b in encoded):
                raise LeRobotDataError(where, f"image column {key!r} has rows without bytes", info.index)
            images[key] = encoded
        for key in cameras:
            if meta.is_video(key):
                video, offset = info.videos[key]
                images[key] = [VideoFrame(str(video), float(offset + t), info.index, key) for t in timestamps]
        return Episode(
            file=where,
            start=lo,
            name=f"{meta.name}:{info.index}",
            state=state,
            action=action,
            prompts=[meta.tasks.get(int(t), "") for t in tasks],
            images=images,
            key=(0, position),
        )

    def frame_lists(self, position: int):
        """The frames of the episode (one list), none when it is unlabeled and `skip_unlabeled`."""
        episode = self.episode(position)
        if self.cfg.skip_unlabeled and not episode.language:
            return
        frames = episode_frames(
            episode,
            self.proprio_norm,
            self.action_norm,
            self.folder.roles,
            {k: k for k in episode.images},
            self.cfg.cond_steps,
            self.cfg.horizon_steps,
        )
        if self.own_dims != self.dims:
            frames = [
                dataclasses.replace(f, proprio=_pad(f.proprio, self.dims[0]), actions=_pad(f.actions, self.dims[1]))
                for f in frames
            ]
        yield frames

    def frames_by_ref(self, refs: list[tuple[int, int, int]]) -> list[Frame]:
        """The frames `refs` name ((0, episode position, step) as in `Frame.ref`), in that order."""
        found: dict[tuple[int, int, int], Frame] = {}
        for position in sorted({int(r[1]) for r in refs}):
            if not 0 <= position < len(self.folder.meta.episodes):
                raise ValueError(
                    f"a saved stream position names episode {position} of {self.folder.meta.root}, "
                    "which it does not hold: resume with the data the run was started with"
                )
            for frames in self.frame_lists(position):
                found.update((f.ref, f) for f in frames)
        try:
            return [found[tuple(r)] for r in refs]
        except KeyError as err:
            raise ValueError(
                f"a saved stream position names a step {self.folder.meta.root} does not have "
                f"({err}): resume with the data the run was started with"
            ) from None


class TrainingStream:
    """Training batches of one worker: each folder's episodes interleaved into its own shuffle buffer, a
    sample drawn from the folders by weight. Saves its position (`save(folder)`: `state.json`, the Parquet
    stream's state per folder and the mixing generator's) and continues from one (`folder=`)."""

    STATE_FILE = "state.json"

    def __init__(
        self, batches: "LeRobotBatches", worker: int, workers: int, decode: "Decoder", folder: Path | None = None
    ):
        cfg = self.cfg = batches.cfg
        self.batches, self.decode = batches, decode
        state = json.loads((folder / self.STATE_FILE).read_text()) if folder is not None else None
        seed = cfg.seed + 1000 * batches.rank + 100_003 * worker
        self.streams: list[tuple[TrainingFrames, ShuffleBuffer] | None] = []
        for d, (folder_, episodes) in enumerate(zip(batches.folders, batches.episodes)):
            share = episodes[worker::workers]
            where = f"rank {batches.rank} worker {worker} of {folder_.meta.root}"
            if not share:
                if batches.weights[d] > 0:
                    raise ValueError(f"{where}: no episodes assigned (fewer episodes than ranks x workers)")
                self.streams.append(None)
                continue
            reader = FolderReader(cfg, folder_, batches.dims)
            saved = state["datasets"][d] if state is not None else None
            frames = TrainingFrames(reader, share, cfg.cycle_length, seed + 17 * d, where, saved and saved["frames"])
            rng = np.random.default_rng([seed, 1, d])
            held = None
            if saved is not None:
                rng.bit_generator.state = saved["shuffle"]["rng"]
                held = reader.frames_by_ref([tuple(r) for r in saved["shuffle"]["refs"]])
            size = max(1, cfg.shuffle_buffer // len(batches.folders))
            self.streams.append((frames, ShuffleBuffer(frames, size, rng, held)))
        self.rng = np.random.default_rng([seed, 2])
        if state is not None:
            self.rng.bit_generator.state = state["mix_rng"]

    def __iter__(self) -> "TrainingStream":
        return self

    def __next__(self) -> dict:
        pending = []
        for _ in range(self.cfg.batch_size):
            d = int(self.rng.choice(len(self.streams), p=self.batches.weights))
            pending.append((d, next(self.streams[d][1])))  # type: ignore[index]
        return self.batches.batch(pending, self.decode)

    def save(self, folder: Path) -> None:
        datasets = [None if s is None else {"frames": s[0].state(), "shuffle": s[1].state()} for s in self.streams]
        (folder / self.STATE_FILE).write_text(
            json.dumps({"datasets": datasets, "mix_rng": self.rng.bit_generator.state})
        )


def _pad(x: np.ndarray, dim: int) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, dim - x.shape[-1])])


class Decoder:
    """`make_batch`'s image decoding of a frame's C*N views: encoded images as the Parquet source decodes
    them, video frames by time. Each open video keeps its last `history` decoded frames, so an ordered
    pass with a C-step image history decodes every video frame once (the next sample's older views are
    the previous sample's newer ones)."""

    def __init__(self, tolerance_s: float, history: int = 1):
        self.videos = VideoFrames(tolerance_s, keep=history)

    def __call__(self, frame: Frame, size: int, image_resize: str) -> tuple[np.ndarray, np.ndarray]:
        images, present = [], []
        for item, source in zip(frame.images, frame.image_sources):
            if isinstance(item, VideoFrame):
                pixels = self.videos.frame(item)
                if pixels.shape[:2] != (size, size):
                    resize = resize_with_pad_like_tensorflow if image_resize == "pad" else resize_like_tensorflow
                    pixels = resize(pixels, size)
                images.append(pixels)
                present.append(True)
                continue
            try:
                image, ok = decode_and_resize(item, size, image_resize)
            except ImageDecodeError as err:
                file, row, column = source
                raise LeRobotDataError(file, f"row {row}, column {column!r}: {err}") from err
            images.append(image)
            present.append(ok)
        return np.stack(images), np.asarray(present, bool)


def _share(n: int, rank: int, world_size: int) -> range:
    if n < world_size:
        raise ValueError(f"{n} episodes cannot be shared by {world_size} ranks")
    return range(rank * n // world_size, (rank + 1) * n // world_size)


class LeRobotBatches(IterableDataset):
    """Iterates batches of this rank's episodes of every folder; build it with `make_lerobot_loader`."""

    def __init__(
        self,
        cfg: LeRobotConfig,
        folders: list[Folder],
        rank: int = 0,
        world_size: int = 1,
        checkpoints: StreamCheckpoints | None = None,
    ):
        self.cfg, self.folders, self.rank, self.world_size = cfg, folders, rank, world_size
        self.checkpoints = checkpoints if cfg.train else None
        self.episodes = [list(_share(len(f.meta.episodes), rank, world_size)) for f in folders]
        self.dims = (max(f.statistics.proprio.dim for f in folders), max(f.statistics.action.dim for f in folders))
        counts = np.asarray(
            [sum(f.meta.episodes[e].length for e in eps) for f, eps in zip(folders, self.episodes)], float
        )
        weights = np.asarray(cfg.weights, float) if cfg.weights is not None else counts
        self.weights = weights / weights.sum()

    @property
    def statistics_paths(self) -> dict[str, Path]:
        return {f.name: f.statistics_path for f in self.folders}

    def _ordered_frames(self):
        """(dataset index, frame) pairs of one ordered pass over the folders."""
        readers = [FolderReader(self.cfg, f, self.dims) for f in self.folders]
        for d, (reader, share) in enumerate(zip(readers, self.episodes)):
            for position in share:
                for frames in reader.frame_lists(position):
                    yield from ((d, f) for f in frames)

    def numpy_batches(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = logical_worker(worker, workers, self.checkpoints)
        cfg, decode = self.cfg, Decoder(self.cfg.video_tolerance_s, self.cfg.cond_steps)
        try:
            if cfg.train:
                yield from checkpointed(
                    lambda folder: TrainingStream(self, worker, workers, decode, folder),
                    self.checkpoints,
                    "lerobot",
                    worker,
                    workers,
                )
                return
            pending: list[tuple[int, Frame]] = []
            for item in self._ordered_frames():
                pending.append(item)
                if len(pending) == cfg.batch_size:
                    yield self.batch(pending, decode)
                    pending = []
            if pending:
                yield self.batch(pending, decode)
        finally:
            decode.videos.close()

    def batch(self, pending: list[tuple[int, Frame]], decode: Decoder) -> dict:
        batch = make_batch([f for _, f in pending], self.cfg.image_size, self.cfg.image_resize, decode=decode)
        batch["dataset_index"] = np.asarray([d for d, _ in pending], np.int32)
        return batch

    def __iter__(self):
        for batch in self.numpy_batches():
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def open_folders(cfg: LeRobotConfig) -> list[Folder]:
    return [open_folder(cfg, path, name) for path, name in zip(cfg.path, _names(cfg.path))]


def make_lerobot_loader(
    cfg: LeRobotConfig, rank: int = 0, world_size: int = 1, checkpoints: StreamCheckpoints | None = None
) -> tuple[DataLoader, dict[str, DatasetStatistics]]:
    """A DataLoader over this rank's share of the episodes of every folder, and the statistics (folder
    name -> statistics) it normalizes with; the JSON paths are `loader.dataset.statistics_paths`. An
    ordered pass (`train=False`) uses at most one worker and reads the folders in order. A training
    loader writes and resumes its position as `checkpoints` says (`pg_vla.data.stream_checkpoint`)."""
    folders = open_folders(cfg)
    workers = cfg.num_workers if cfg.train else min(cfg.num_workers, 1)
    if cfg.train:
        check_restorable(checkpoints, "lerobot", max(workers, 1))
    dataset = LeRobotBatches(cfg, folders, rank, world_size, checkpoints)
    extra = (
        dict(multiprocessing_context=SPAWN, persistent_workers=True, prefetch_factor=cfg.prefetch_batches)
        if workers
        else {}
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, **extra)
    return loader, {f.name: f.statistics for f in folders}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Open LeRobot folders, compute/load statistics, time the loader.")
    parser.add_argument("--path", nargs="+", required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--cond_steps", type=int, default=1)
    parser.add_argument("--horizon_steps", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--statistics_dir", default=None)
    args = parser.parse_args()
    cfg = LeRobotConfig(
        path=tuple(args.path),
        batch_size=args.batch_size,
        image_size=args.image_size,
        cond_steps=args.cond_steps,
        horizon_steps=args.horizon_steps,
        num_workers=args.num_workers,
        statistics_dir=args.statistics_dir,
    )
    loader, _ = make_lerobot_loader(cfg)
    for path in loader.dataset.statistics_paths.values():
        print(path)
    from pg_vla.data.dataloader import time_batches

    time_batches(loader, args.num_batches)


if __name__ == "__main__":
    main()
