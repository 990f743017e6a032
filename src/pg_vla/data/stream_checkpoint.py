"""Training streams that resume where they stopped, without replaying what they produced.

DataLoader workers run ahead of the trainer (prefetch), so a stream cannot be asked for its position
when the trainer saves. Instead the trainer says, before the loader starts, after which batch counts
it will save (`StreamCheckpoints`). Each worker writes its position right after producing the last
batch it gives before such a count, before handing that batch over. So when the trainer saves, the
position of every worker is on disk, and the trainer moves those folders into the checkpoint.

What a position is depends on the source:
    parquet  `state.json`: epoch, open read units and episodes taken, the shuffle buffer named by
             (file, episode, step) and its generator state (kilobytes; restoring re-reads the
             buffered episodes and the open units, about what filling the buffer at start costs)
    rlds     tf.data's own iterator checkpoint (`iterator.*`): the shuffle buffer of encoded frames
             and the readers' offsets; bounded by `shuffle_buffer` encoded frames plus a few batches

Layout: `<staging>/batches_<N>/rank_<r>/worker_<l>/` (position files + `position.json`), N the
number of batches the trainer had taken from this rank's loader. A checkpoint holds the rank folders
as `data_stream/rank_<r>/`. The staging folder must be one that every rank reaches (the log folder
on a shared filesystem when several nodes train).

Workers: DataLoader hands out batches round-robin, starting with worker 0. Logical worker l produces
the global batches l, l + W, l + 2W, ...; after a resume at N, physical worker p plays logical worker
(p + N) % W, so the order goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POSITION_FILE = "position.json"
FORMAT = 1


class StreamRestoreError(ValueError):
    """A saved stream position does not fit the loader it is given to (other source, workers or data)."""


class CheckpointableStream(Protocol):
    def __next__(self) -> dict: ...

    def save(self, folder: Path) -> None: ...


@dataclass(frozen=True)
class StreamCheckpoints:
    """When a training loader writes its position, where, and where it starts from."""

    staging: str  # folder the workers write positions into (see the module docstring)
    rank: int  # the trainer's rank (a replicated stream is read by every rank: each writes its own)
    every: int  # a position every `every` batches
    final: int  # and after `final` batches
    restore: str | None = None  # a checkpoint's data_stream/rank_<r> folder to continue from
    start: int = 0  # batches taken from the loader when `restore` was written

    def folder(self, batches: int) -> Path:
        """Where this rank's workers put their positions after `batches` batches."""
        return Path(self.staging) / staged_name(batches) / f"rank_{self.rank}"

    def points(self, lo: int, hi: int) -> list[int]:
        """Batch counts N with lo < N <= hi at which the trainer saves (and N > start)."""
        lo = max(lo, self.start)
        found = list(range((lo // self.every + 1) * self.every, hi + 1, self.every)) if self.every > 0 else []
        if lo < self.final <= hi and self.final not in found:
            found.append(self.final)
        return sorted(found)


def staged_name(batches: int) -> str:
    return f"batches_{batches:09d}"


def logical_worker(worker: int, workers: int, checkpoints: StreamCheckpoints | None) -> int:
    """The logical worker a DataLoader worker plays (see the module docstring)."""
    start = checkpoints.start if checkpoints is not None else 0
    return (worker + start) % workers


def check_restorable(checkpoints: StreamCheckpoints | None, source: str, workers: int) -> None:
    """In the calling process, before workers start: the saved position fits this loader."""
    if checkpoints is None or checkpoints.restore is None:
        return
    folder = Path(checkpoints.restore)
    for worker in range(workers):
        position = read_position(folder / f"worker_{worker}")
        if position["source"] != source or position["workers"] != workers or position["batches"] != checkpoints.start:
            raise StreamRestoreError(
                f"{folder}: the saved stream position is of a {position['source']} loader with {position['workers']} "
                f"worker(s) after {position['batches']} batches; this loader reads {source} with {workers} worker(s) "
                f"and resumes after {checkpoints.start}"
            )
    extra = sorted(p.name for p in folder.glob("worker_*") if int(p.name.split("_")[1]) >= workers)
    if extra:
        raise StreamRestoreError(
            f"{folder}: positions of workers {extra}, which this loader ({workers} worker(s)) does not have"
        )


def read_position(folder: Path) -> dict[str, Any]:
    path = folder / POSITION_FILE
    try:
        position = json.loads(path.read_text())
    except FileNotFoundError:
        raise StreamRestoreError(f"{folder} holds no saved stream position ({POSITION_FILE})") from None
    except ValueError as err:
        raise StreamRestoreError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(position, dict) or position.get("format") != FORMAT:
        raise StreamRestoreError(f"{path}: not a stream position of format {FORMAT}")
    return position


def checkpointed(
    open_stream: Callable[[Path | None], CheckpointableStream],
    checkpoints: StreamCheckpoints | None,
    source: str,
    worker: int,
    workers: int,
) -> Iterator[dict]:
    """The batches of logical worker `worker` of `workers`, writing its position at the save points.

    `open_stream(folder)` opens the stream at the position saved in `folder` (None: the start).
    """
    if checkpoints is None:
        yield from open_stream(None)
        return
    restore = Path(checkpoints.restore) / f"worker_{worker}" if checkpoints.restore else None
    stream = open_stream(restore)
    # the next global batch this worker produces: the first of its batches at or after `start`
    g = checkpoints.start + (worker - checkpoints.start) % workers
    for n in checkpoints.points(g - workers, g):  # save points before this worker's first batch of the run
        _write(stream, checkpoints.folder(n), worker, workers, n, source)
    while True:
        batch = next(stream)
        for n in checkpoints.points(g, g + workers):  # this is the worker's last batch before n
            _write(stream, checkpoints.folder(n), worker, workers, n, source)
        yield batch
        g += workers


def _write(
    stream: CheckpointableStream, rank_folder: Path, worker: int, workers: int, batches: int, source: str
) -> None:
    """The position into rank_folder/worker_<l>, atomically (a stale folder of a crashed run is replaced)."""
    final = rank_folder / f"worker_{worker}"
    tmp = rank_folder / f".tmp-worker_{worker}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stream.save(tmp)
    (tmp / POSITION_FILE).write_text(
        json.dumps({"format": FORMAT, "source": source, "worker": worker, "workers": workers, "batches": batches})
    )
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def prune_staged(staging: str | Path, upto: int) -> None:
    """Remove the staged positions of `upto` batches or fewer (saved, or stale from a crashed run)."""
    staging = Path(staging)
    if not staging.is_dir():
        return
    for folder in staging.glob("batches_*"):
        try:
            batches = int(folder.name.split("_")[1])
        except ValueError:
            continue
        if batches <= upto:
            shutil.rmtree(folder, ignore_errors=True)
