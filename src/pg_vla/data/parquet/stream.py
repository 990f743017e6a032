"""Which episodes a reader reads (rank and worker shares, read units) and in which order.

A read unit is the episodes of one file whose first row lies in one row group; reading it reads
that row group and, for an episode that runs on, the following ones. Units are independent, so
training shuffles their order every epoch and interleaves `cycle_length` of them into a frame
shuffle buffer, while an ordered pass reads them in file order.

Training positions (`TrainingFrames.state`, `ShuffleBuffer.state`) are small: they name frames by
(file, episode, step), so a resumed run re-reads only what the buffer and the open units held.

Ranks take contiguous, disjoint slices of the episodes of all files (in file order), like
`tfds.even_splits` does for RLDS splits; DataLoader workers of a rank take every k-th unit. Episodes
holding NaN/inf (`FileIndex.non_finite`, with `skip_non_finite`) are in no share; their rows may
still be read with a neighbour's row group, but never become frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pg_vla.data.normalization import Normalizer
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.parquet.files import ColumnPlan, FileIndex, iter_row_blocks, open_parquet
from pg_vla.data.parquet.frames import Episode, Frame, ShuffleBuffer, episode_frames, make_batch


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

    def __init__(
        self,
        cfg: ParquetConfig,
        indexes: list[FileIndex],
        plans: list[ColumnPlan],
        proprio_norm: Normalizer,
        action_norm: Normalizer,
        dims: dict[str, int | None],
    ):
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
                yield self._episode(index, plan, lo, pending, (unit.file, e))
                pending = []
                k += 1
            del block

    def _episode(self, index: FileIndex, plan: ColumnPlan, start: int, pieces: list, key: tuple[int, int]) -> Episode:
        def cat(get):
            return [x for block, a, b in pieces for x in get(block)[a:b]]

        state = np.concatenate([block.state[a:b] for block, a, b in pieces])
        action = np.concatenate([block.action[a:b] for block, a, b in pieces])
        images = {name: cat(lambda blk, n=name: blk.images[n]) for name in pieces[0][0].images}
        ids = cat(lambda blk: blk.episode_id) if pieces[0][0].episode_id is not None else [None]
        name = ids[0] or f"{index.path.rsplit('/', 1)[-1]}:{start}"
        return Episode(
            file=index.path,
            start=start,
            name=name,
            state=state,
            action=action,
            prompts=cat(lambda blk: blk.prompt),
            images=images,
            key=key,
        )

    def frame_lists(self, unit: ReadUnit) -> Iterator[list[Frame]]:
        """The frames of each usable episode of a unit, one list per episode."""
        for episode in self.episodes(unit):
            if self.cfg.skip_unlabeled and not episode.language:
                continue
            yield self.frames(episode)

    def frames(self, episode: Episode) -> list[Frame]:
        return episode_frames(
            episode,
            self.proprio_norm,
            self.action_norm,
            self.role_columns,
            self.plans[episode.key[0]].names,
            self.cfg.cond_steps,
            self.cfg.horizon_steps,
        )

    def frames_by_ref(self, refs: list[tuple[int, int, int]]) -> list[Frame]:
        """The frames `refs` name ((file, episode, step) as in `Frame.ref`), in that order; reads each
        named episode once."""
        wanted = {tuple(r) for r in refs}
        episodes = sorted({(f, e) for f, e, _ in wanted})
        for f, e in episodes:
            if not (0 <= f < len(self.indexes) and 0 <= e < self.indexes[f].num_episodes):
                raise ValueError(
                    f"a saved stream position names episode {e} of file {f}, which these files do not "
                    "hold: resume with the data the run was started with"
                )
        found: dict[tuple[int, int, int], Frame] = {}
        for unit in read_units(self.indexes, episodes):
            for episode in self.episodes(unit):
                for frame in self.frames(episode):
                    if frame.ref in wanted:
                        found[frame.ref] = frame
        missing = wanted - set(found)
        if missing:
            raise ValueError(
                f"a saved stream position names steps the episodes do not have (e.g. {min(missing)}): "
                "resume with the data the run was started with"
            )
        return [found[tuple(r)] for r in refs]


def ordered_frames(reader: EpisodeReader, units: list[ReadUnit]) -> Iterator[Frame]:
    for unit in units:
        for frames in reader.frame_lists(unit):
            yield from frames


class TrainingFrames:
    """Forever: each epoch shuffles the units and interleaves `cycle_length` of them, taking one episode
    from each open unit in turn (a finished unit's place goes to the next one).

    `state()` is the position as JSON-like values (epoch, units opened, per open unit the episodes
    taken, the frame reached in the current episode); `TrainingFrames(..., state=...)` continues from
    it, re-reading only the open units.
    """

    def __init__(
        self,
        reader: EpisodeReader,
        units: list[ReadUnit],
        cycle_length: int,
        seed: int,
        where: str,
        state: dict | None = None,
    ):
        self.reader, self.units, self.cycle_length, self.seed, self.where = reader, units, cycle_length, seed, where
        self._start_epoch(0)
        if state is not None:
            self._restore(state)

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        self.opened = 0  # units of `order` opened so far
        self.open: list[list] = []  # [position in order, episodes taken, iterator of episode frame lists]
        self.turn = 0  # the open unit that gives the next episode
        self.current: list[Frame] = []  # the episode being emitted, from open[self.source]
        self.source, self.offset = -1, 0
        self.produced = 0  # frames this epoch

    def __iter__(self) -> "TrainingFrames":
        return self

    def __next__(self) -> Frame:
        while self.offset >= len(self.current):
            self._next_episode()
        self.offset += 1
        return self.current[self.offset - 1]

    def _next_episode(self) -> None:
        while self.opened < len(self.order) and len(self.open) < self.cycle_length:
            self.open.append([self.opened, 0, self._frame_lists(self.opened)])
            self.opened += 1
        if not self.open:
            if self.produced == 0:
                raise ValueError(f"{self.where}: no usable episode to train on (all empty, unlabeled or non-finite)")
            self._start_epoch(self.epoch + 1)
            return
        self.turn %= len(self.open)
        unit = self.open[self.turn]
        frames = next(unit[2], None)
        if frames is None:
            del self.open[self.turn]  # the next open unit takes its turn
            self.current, self.offset = [], 0
            return
        unit[1] += 1
        self.current, self.source, self.offset = frames, self.turn, 0
        self.produced += len(frames)
        self.turn += 1

    def _frame_lists(self, position: int):
        return self.reader.frame_lists(self.units[int(self.order[position])])

    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "opened": self.opened,
            "open": [[p, taken] for p, taken, _ in self.open],
            "turn": self.turn,
            "source": self.source,
            "offset": self.offset,
            "produced": self.produced,
            "units": len(self.units),
        }

    def _restore(self, state: dict) -> None:
        if state["units"] != len(self.units):
            raise ValueError(
                f"{self.where}: the saved stream position is of {state['units']} read units, this "
                f"reader has {len(self.units)}: resume with the data and workers the run was started with"
            )
        self._start_epoch(int(state["epoch"]))
        self.opened, self.turn, self.produced = int(state["opened"]), int(state["turn"]), int(state["produced"])
        self.source, self.offset = int(state["source"]), int(state["offset"])
        for slot, (position, taken) in enumerate(state["open"]):
            lists = self._frame_lists(position)
            last = None
            for _ in range(taken):  # re-read the episodes this unit already gave
                last = next(lists)
            self.open.append([position, taken, lists])
            if slot == self.source and self.offset < len(last or []):
                self.current = last


class TrainingBatches:
    """Training batches of one reader (units interleaved, a shuffle buffer, decoded batches) that can
    save its position (`save(folder)`: `state.json`) and continue from one (`folder=`)."""

    STATE_FILE = "state.json"

    def __init__(
        self,
        reader: EpisodeReader,
        units: list[ReadUnit],
        cfg: ParquetConfig,
        seed: int,
        where: str,
        folder: Path | None = None,
    ):
        self.cfg = cfg
        state = json.loads((folder / self.STATE_FILE).read_text()) if folder is not None else None
        rng = np.random.default_rng([seed, 1])
        held = None
        if state is not None:
            rng.bit_generator.state = state["shuffle"]["rng"]
            held = reader.frames_by_ref([tuple(r) for r in state["shuffle"]["refs"]])
        self.frames = TrainingFrames(reader, units, cfg.cycle_length, seed, where, state and state["frames"])
        self.buffer = ShuffleBuffer(self.frames, cfg.shuffle_buffer, rng, held)

    def __iter__(self) -> "TrainingBatches":
        return self

    def __next__(self) -> dict:
        frames = [next(self.buffer) for _ in range(self.cfg.batch_size)]
        return make_batch(frames, self.cfg.image_size, self.cfg.image_resize)

    def save(self, folder: Path) -> None:
        state = {"frames": self.frames.state(), "shuffle": self.buffer.state()}
        (folder / self.STATE_FILE).write_text(json.dumps(state))
