"""Episodes -> frames (windows, normalization) -> batches, in numpy, with the RLDS path's conventions.

Shapes: T steps of an episode, P proprio dim, A action dim, C cond steps, H horizon steps, B batch,
N cameras, S image size.

Windows (as `pg_vla.data.rlds.trajectory.add_windows`). Frame t gets
    proprio  steps t-C+1 .. t      (C, P)  before the episode start: the first step repeated,
                                           `proprio_mask` False there
    images   steps t-C+1 .. t      (C*N,)  frame-major (oldest frame first, cameras in role order),
                                           encoded; the same window as proprio, and `make_batch`
                                           masks the views before the episode start (`view_mask`)
    actions  steps t .. t+H-1      (H, A)  past the episode end: the last action repeated,
                                           `action_mask` False there
Normalization is `Normalizer.normalize` evaluated in float32 like the RLDS path's `normalize_tf`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pg_vla.data.normalization import Normalizer
from pg_vla.data.parquet.config import ParquetDataError
from pg_vla.data.parquet.images import ImageDecodeError, decode_and_resize


@dataclass
class Episode:
    """One episode's rows of a file, converted."""

    file: str
    start: int  # row of is_first within the file
    name: str  # episode_id, or "<file name>:<start row>"
    state: np.ndarray  # (T, P) float32
    action: np.ndarray  # (T, A) float32
    prompts: list[str | None]  # (T,)
    images: dict[str, list[bytes | None]]  # logical image column -> (T,) encoded
    key: tuple[int, int] | None = None  # (file position, episode number within the file) of the source list

    @property
    def language(self) -> str:
        return self.prompts[0] or ""

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Frame:
    """One sample before decoding: images still encoded (cheap to hold in a shuffle buffer)."""

    images: tuple[bytes | None, ...]  # (C*N,) frame-major: per history step, per camera role
    image_sources: tuple[tuple[str, int, str] | None, ...]  # (C*N,) (file, row, column) per view, for errors
    proprio: np.ndarray  # (C, P) float32, normalized
    proprio_mask: np.ndarray  # (C,) bool
    actions: np.ndarray  # (H, A) float32, normalized
    action_mask: np.ndarray  # (H,) bool
    language: str
    step: int
    episode: str
    ref: tuple[int, int, int] | None = None  # (file position, episode number, step): names it in a stream state


def normalize_f32(x: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """`Normalizer.normalize` in float32 arithmetic, as the RLDS path normalizes its float32 tensors."""
    return normalizer.normalize(np.asarray(x, np.float32))


def windows(length: int, cond_steps: int, horizon_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Step indices: history (T, C) (negative before the start) and chunk (T, H) (>= T past the end)."""
    steps = np.arange(length)[:, None]
    return steps + np.arange(-cond_steps + 1, 1)[None, :], steps + np.arange(horizon_steps)[None, :]


def episode_frames(
    episode: Episode,
    proprio_norm: Normalizer,
    action_norm: Normalizer,
    role_columns: dict[str, str | None],
    column_names: dict[str, str],
    cond_steps: int,
    horizon_steps: int,
) -> list[Frame]:
    """Every step of an episode as a frame (normalized windows, per-step language)."""
    length = len(episode)
    proprio = normalize_f32(episode.state, proprio_norm)  # (T, P)
    action = normalize_f32(episode.action, action_norm)  # (T, A)
    history, chunk = windows(length, cond_steps, horizon_steps)
    past = np.maximum(history, 0)  # (T, C): before the episode start, the first step
    proprio_windows = proprio[past]  # (T, C, P)
    action_windows = action[np.minimum(chunk, length - 1)]  # (T, H, A)
    proprio_mask, action_mask = history >= 0, chunk < length
    columns = [episode.images.get(logical) if logical is not None else None for logical in role_columns.values()]
    names = [column_names[logical] if c is not None else None for logical, c in zip(role_columns.values(), columns)]
    frames = []
    for t in range(length):
        images, sources = _views(episode, columns, names, past[t])
        frames.append(
            Frame(
                images=images,
                image_sources=sources,
                proprio=proprio_windows[t],
                proprio_mask=proprio_mask[t],
                actions=action_windows[t],
                action_mask=action_mask[t],
                language=episode.prompts[t] or episode.language,
                step=t,
                episode=episode.name,
                ref=None if episode.key is None else (*episode.key, t),
            )
        )
    return frames


def _views(
    episode: Episode, columns: list[list | None], names: list[str | None], steps: np.ndarray
) -> tuple[tuple, tuple]:
    """The encoded images of `steps` (C,) for every camera (`columns` (N,), None: absent), frame-major
    (C*N,), and where each one is stored ((file, row, column) or None)."""
    images, sources = [], []
    for step in steps.tolist():
        for column, name in zip(columns, names):
            images.append(column[step] if column is not None else None)
            sources.append((episode.file, episode.start + step, name) if column is not None else None)
    return tuple(images), tuple(sources)


def view_mask(present: np.ndarray, history_mask: np.ndarray) -> np.ndarray:
    """present (C*N,) bool (camera there), history_mask (C,) bool (step inside the episode) -> (C*N,)
    image_mask: a view counts only when both hold (views are frame-major)."""
    if present.shape[0] % history_mask.shape[0]:
        raise ValueError(f"{present.shape[0]} image views are not a multiple of {history_mask.shape[0]} history steps")
    return present & np.repeat(history_mask, present.shape[0] // history_mask.shape[0])


def decode_frame_images(frame: Frame, image_size: int, image_resize: str = "stretch") -> tuple[np.ndarray, np.ndarray]:
    """-> images (C*N, S, S, 3) uint8, present (C*N,) bool (camera there); undecodable bytes name file,
    row, column."""
    images, present = [], []
    for encoded, source in zip(frame.images, frame.image_sources):
        try:
            image, ok = decode_and_resize(encoded, image_size, image_resize)
        except ImageDecodeError as err:
            file, row, column = source
            raise ParquetDataError(file, row, column, str(err)) from err
        images.append(image)
        present.append(ok)
    return np.stack(images), np.asarray(present, bool)


def make_batch(
    frames: list[Frame], image_size: int, image_resize: str = "stretch", decode=decode_frame_images
) -> dict[str, np.ndarray | list[str]]:
    """Frames -> the batch layout of `pg_vla.data.dataloader` (numpy; strings as lists); `decode(frame,
    image_size, image_resize)` -> (images (C*N, S, S, 3), present (C*N,)) (other sources store frames
    otherwise); the views before the episode start are masked here (`view_mask`)."""
    decoded = [decode(f, image_size, image_resize) for f in frames]
    return {
        "images": np.stack([d[0] for d in decoded]),  # (B, C*N, S, S, 3) uint8, frame-major
        "image_mask": np.stack([view_mask(d[1], f.proprio_mask) for d, f in zip(decoded, frames)]),  # (B, C*N)
        "proprio": np.stack([f.proprio for f in frames]),  # (B, C, P) float32
        "proprio_mask": np.stack([f.proprio_mask for f in frames]),  # (B, C)
        "actions": np.stack([f.actions for f in frames]),  # (B, H, A) float32
        "action_mask": np.stack([f.action_mask for f in frames]),  # (B, H)
        "language": [f.language for f in frames],
        "step": np.asarray([f.step for f in frames], np.int32),  # (B,)
        "tfds_id": [f.episode for f in frames],
        "dataset_index": np.zeros(len(frames), np.int32),  # (B,) one dataset
    }


class ShuffleBuffer:
    """A shuffle buffer: filled to `size`, then each frame out is a random slot, refilled from the stream;
    a finite stream's remainder comes out shuffled at its end.

    Its position is small: `state()` names the held frames by `Frame.ref` and holds the generator's
    state; `ShuffleBuffer(frames, size, rng, held)` continues from it, `held` being those frames re-read.
    """

    def __init__(self, frames: Iterator[Frame], size: int, rng: np.random.Generator, held: list[Frame] | None = None):
        self.frames, self.size, self.rng = frames, size, rng
        self.buffer: list[Frame] = list(held or [])
        self.draining = False  # the stream ended: the buffer empties in shuffled order

    def __iter__(self) -> "ShuffleBuffer":
        return self

    def __next__(self) -> Frame:
        while not self.draining and len(self.buffer) < self.size:
            self._pull(None)
        if self.draining:
            if not self.buffer:
                raise StopIteration
            return self.buffer.pop()
        i = int(self.rng.integers(self.size))
        out = self.buffer[i]
        self._pull(i)
        return out

    def _pull(self, slot: int | None) -> None:
        frame = next(self.frames, None)
        if frame is None:
            if slot is not None:
                self.buffer.pop(slot)
            self.draining = True
            self.rng.shuffle(self.buffer)
        elif slot is None:
            self.buffer.append(frame)
        else:
            self.buffer[slot] = frame

    def state(self) -> dict:
        if self.draining or any(f.ref is None for f in self.buffer):
            raise ValueError("only a running stream of frames with refs has a resumable position")
        return {"refs": [list(f.ref) for f in self.buffer], "rng": self.rng.bit_generator.state}


def batched(
    frames: Iterable[Frame], batch_size: int, image_size: int, drop_remainder: bool, image_resize: str = "stretch"
) -> Iterator[dict[str, np.ndarray | list[str]]]:
    pending: list[Frame] = []
    for frame in frames:
        pending.append(frame)
        if len(pending) == batch_size:
            yield make_batch(pending, image_size, image_resize)
            pending = []
    if pending and not drop_remainder:
        yield make_batch(pending, image_size, image_resize)
