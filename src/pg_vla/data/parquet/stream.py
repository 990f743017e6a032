"""Which episodes a reader reads (rank and worker shares, read units) and in which order.

A read unit is the episodes of one file whose first row lies in one row group; reading it reads
that row group and, for an episode that runs on, the following ones. Units are independent, so
training shuffles their order every epoch and interleaves `cycle_length` of them into a frame
shuffle buffer, while an ordered pass reads them in file order.

Ranks take contiguous, disjoint slices of the episodes of all files (in file order), like
`tfds.even_splits` does for RLDS splits; DataLoader workers of a rank take every k-th unit. Episodes
holding NaN/inf (`FileIndex.non_finite`, with `skip_non_finite`) are in no share; their rows may
still be read with a neighbour's row group, but never become frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pg_vla.data.normalization import Normalizer
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.parquet.files import ColumnPlan, FileIndex, iter_row_blocks, open_parquet
from pg_vla.data.parquet.frames import Episode, Frame, episode_frames


@dataclass(frozen=True)
class ReadUnit:
    file: int  # position in the file list
    episodes: tuple[int, ...]  # episode numbers within the file, ascending


def rank_episodes(indexes: list[FileIndex], rank: int, world_size: int) -> list[tuple[int, int]]:
    """This rank's contiguous share of all (file, episode) pairs, the non-finite episodes left out."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    pairs = []
    for f, index in enumerate(indexes):
        skip = set(index.non_finite)
        pairs.extend((f, e) for e in range(index.num_episodes) if e not in skip)
    if len(pairs) < world_size:
        skipped = sum(len(index.non_finite) for index in indexes)
        left_out = f" ({skipped} left out for NaN/inf values)" if skipped else ""
        raise ValueError(f"{len(pairs)} episodes{left_out} cannot be shared by {world_size} ranks")
    lo, hi = rank * len(pairs) // world_size, (rank + 1) * len(pairs) // world_size
    return pairs[lo:hi]


def read_units(indexes: list[FileIndex], episodes: list[tuple[int, int]]) -> list[ReadUnit]:
    """Group (file, episode) pairs by the row group of the episode's first row, in file order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for f, e in episodes:
        groups.setdefault((f, indexes[f].row_group_of(int(indexes[f].starts[e]))), []).append(e)
    return [ReadUnit(f, tuple(eps)) for (f, _), eps in groups.items()]


class EpisodeReader:
    """Reads units into frames; holds no more than one row block per open unit plus its episode."""

    def __init__(self, cfg: ParquetConfig, indexes: list[FileIndex], plans: list[ColumnPlan],
                 proprio_norm: Normalizer, action_norm: Normalizer, dims: dict[str, int | None]):
        self.cfg, self.indexes, self.plans = cfg, indexes, plans
        self.proprio_norm, self.action_norm, self.dims = proprio_norm, action_norm, dict(dims)
        self.role_columns = cfg.role_columns()

    def episodes(self, unit: ReadUnit) -> Iterator[Episode]:
        index, plan = self.indexes[unit.file], self.plans[unit.file]
        starts = index.starts
        wanted = list(unit.episodes)
        parquet = open_parquet(index.path)
        first, stop = int(starts[wanted[0]]), int(starts[wanted[-1] + 1])
        pending: list = []
        k = 0
        for block in iter_row_blocks(parquet, index, plan, first, stop, self.dims, self.cfg.row_group_budget_bytes):
            block_stop = block.start + len(block)
            while k < len(wanted):
                e = wanted[k]
                lo, hi = int(starts[e]), int(starts[e + 1])
                if lo >= block_stop:
                    break
                a, b = max(lo, block.start) - block.start, min(hi, block_stop) - block.start
                if b > a:
                    pending.append((block, a, b))
                if hi > block_stop:
                    break  # continues in the next block
                yield self._episode(index, plan, lo, pending)
                pending = []
                k += 1
            del block

    def _episode(self, index: FileIndex, plan: ColumnPlan, start: int, pieces: list) -> Episode:
        def cat(get):
            return [x for block, a, b in pieces for x in get(block)[a:b]]

        state = np.concatenate([block.state[a:b] for block, a, b in pieces])
        action = np.concatenate([block.action[a:b] for block, a, b in pieces])
        images = {name: cat(lambda blk, n=name: blk.images[n]) for name in pieces[0][0].images}
        ids = cat(lambda blk: blk.episode_id) if pieces[0][0].episode_id is not None else [None]
        name = ids[0] or f"{index.path.rsplit('/', 1)[-1]}:{start}"
        return Episode(file=index.path, start=start, name=name, state=state, action=action,
                       prompts=cat(lambda blk: blk.prompt), images=images)

    def frame_lists(self, unit: ReadUnit) -> Iterator[list[Frame]]:
        """The frames of each usable episode of a unit, one list per episode."""
        names = self.plans[unit.file].names
        for episode in self.episodes(unit):
            if self.cfg.skip_unlabeled and not episode.language:
                continue
            yield episode_frames(episode, self.proprio_norm, self.action_norm, self.role_columns, names,
                                 self.cfg.cond_steps, self.cfg.horizon_steps)


def ordered_frames(reader: EpisodeReader, units: list[ReadUnit]) -> Iterator[Frame]:
    for unit in units:
        for frames in reader.frame_lists(unit):
            yield from frames


def training_frames(reader: EpisodeReader, units: list[ReadUnit], cycle_length: int, seed: int,
                    where: str) -> Iterator[Frame]:
    """Forever: each epoch shuffles the units and interleaves `cycle_length` of them episode by episode."""
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(units))
        queue = [units[i] for i in order]
        active: list[Iterator[Frame]] = []
        produced = 0
        while queue or active:
            while queue and len(active) < cycle_length:
                active.append(reader.frame_lists(queue.pop(0)))
            for it in list(active):
                frames = next(it, None)
                if frames is None:
                    active.remove(it)
                    continue
                produced += len(frames)
                yield from frames
        if produced == 0:
            raise ValueError(f"{where}: no usable episode to train on (all empty, unlabeled or non-finite)")
        epoch += 1
