"""Writes LeRobot dataset folders, format v3.0 (and v2.1), from episodes of state, action, task and cameras.

Layout written (v3.0; `chunks_size` files per chunk folder):

    meta/info.json                         codebase_version "v3.0", fps, features, path templates, totals
    meta/tasks.parquet                     task_index (int64), task (string; the pandas index, as LeRobot reads it)
    meta/episodes/chunk-000/file-000.parquet
        episode_index, tasks, length, data/chunk_index, data/file_index, dataset_from_index,
        dataset_to_index, videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
        meta/episodes/{chunk_index, file_index}
    meta/stats.json                        per feature: min, max, mean, std, count, q01, q99
    data/chunk-000/file-000.parquet        rows of many episodes: <state key>, <action key>, timestamp,
                                           frame_index, episode_index, index, task_index[, image features]
    videos/<key>/chunk-000/file-000.mp4    the frames of many episodes back to back (time base 1/fps)

v2.1 (`version="v2.1"`): meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl,
data/chunk-000/episode_000000.parquet and videos/chunk-000/<key>/episode_000000.mp4, one per episode.

Cameras are stored as video (`video=True`: encoded with `codec`, LeRobot's default libsvtav1,
yuv420p) or as images in the parquet (`video=False`: the given encoded bytes, in LeRobot's image
struct {bytes, path}). Statistics use `ArrayStatistics.from_values` (q01/q99 = its p01/p99).

Shapes: T steps of an episode, P state dim, A action dim, H, W a camera's height and width.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pg_vla.data.normalization import ArrayStatistics

V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_TASKS_PANDAS = {
    "index_columns": ["task"],
    "column_indexes": [],
    "columns": [
        {
            "name": "task_index",
            "field_name": "task_index",
            "pandas_type": "int64",
            "numpy_type": "int64",
            "metadata": None,
        },
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
    ],
}


@dataclass
class _VideoOut:
    """An mp4 being written for one camera key."""

    path: Path
    container: object
    stream: object
    chunk: int
    file: int
    frames: int = 0


@dataclass
class LeRobotWriter:
    root: Path
    fps: int
    state_key: str = "observation.state"
    action_key: str = "action"
    cameras: tuple[str, ...] = ()  # camera feature keys
    video: bool = True
    version: str = "v3.0"
    codec: str = "libsvtav1"
    codec_options: dict | None = None  # None: LeRobot's settings for libsvtav1 (crf 30, keyframe every 2), else g=2
    frames_per_data_file: int = 100_000  # v3.0: a data file is closed after this many rows
    frames_per_video_file: int = 100_000  # v3.0: a video file is closed after this many frames
    chunks_size: int = 1000
    write_stats: bool = True

    def __post_init__(self) -> None:
        if self.version not in ("v3.0", "v2.1"):
            raise ValueError(f"version must be v3.0 or v2.1, got {self.version!r}")
        self.root = Path(self.root)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.shapes: dict[str, tuple[int, int]] = {}
        self.total = 0
        self._rows: list[pa.Table] = []  # v3.0: rows of the open data file
        self._data_file = 0
        self._videos: dict[str, _VideoOut] = {}
        self._video_files: dict[str, int] = {key: 0 for key in self.cameras}

    # ---- episodes -------------------------------------------------------------------------------------
    def add_episode(
        self, state: np.ndarray, action: np.ndarray, tasks: str | list[str], images: dict[str, list] | None = None
    ) -> int:
        """state (T, P), action (T, A), a task string (or one per step), images: camera key -> T frames
        ((H, W, 3) uint8 arrays when `video`, any iterable: encoded one at a time; encoded bytes otherwise).
        Returns the episode_index."""
        state, action = np.asarray(state, np.float32), np.asarray(action, np.float32)
        length = len(state)
        tasks = [tasks] * length if isinstance(tasks, str) else list(tasks)
        images = images or {}
        if sorted(images) != sorted(self.cameras):
            raise ValueError(f"images for {sorted(images)}, the writer has cameras {sorted(self.cameras)}")
        if (
            len(action) != length
            or len(tasks) != length
            or (not self.video and any(len(v) != length for v in images.values()))
        ):
            raise ValueError("state, action, tasks and every camera need one entry per step")
        index = len(self.episodes)
        task_index = np.asarray([self.tasks.setdefault(t, len(self.tasks)) for t in tasks], np.int64)
        frame_index = np.arange(length, dtype=np.int64)
        columns = {
            self.state_key: _lists(state),
            self.action_key: _lists(action),
            "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(length, index)),
            "index": pa.array(self.total + frame_index),
            "task_index": pa.array(task_index),
        }
        episode = {
            "episode_index": index,
            "tasks": list(dict.fromkeys(tasks)),
            "length": length,
            "dataset_from_index": self.total,
            "dataset_to_index": self.total + length,
        }
        for key in self.cameras:
            if self.video:
                episode.update(self._write_video(key, index, images[key], length))
            else:
                columns[key] = pa.array([{"bytes": bytes(b), "path": None} for b in images[key]], IMAGE_STRUCT)
                if key not in self.shapes:
                    from pg_vla.data.parquet.images import decode_rgb

                    self.shapes[key] = decode_rgb(images[key][0]).shape[:2]
        table = pa.table(columns)
        if self.version == "v2.1":
            chunk = index // self.chunks_size
            path = self.root / V21_DATA.format(episode_chunk=chunk, episode_index=index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        else:
            episode.update(
                {
                    "data/chunk_index": self._data_file // self.chunks_size,
                    "data/file_index": self._data_file % self.chunks_size,
                }
            )
            self._rows.append(table)
            if sum(t.num_rows for t in self._rows) >= self.frames_per_data_file:
                self._flush_data()
        self.episodes.append(episode)
        self.states.append(state)
        self.actions.append(action)
        self.total += length
        return index

    def _flush_data(self) -> None:
        if not self._rows:
            return
        path = self.root / V30_DATA.format(
            chunk_index=self._data_file // self.chunks_size, file_index=self._data_file % self.chunks_size
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._rows), path, row_group_size=64)
        self._rows = []
        self._data_file += 1

    # ---- video --------------------------------------------------------------------------------------------
    def _open_video(self, key: str, episode: int) -> _VideoOut:
        import av

        if self.version == "v2.1":
            chunk, file = episode // self.chunks_size, episode
            path = self.root / V21_VIDEO.format(episode_chunk=chunk, video_key=key, episode_index=episode)
        else:
            n = self._video_files[key]
            chunk, file = n // self.chunks_size, n % self.chunks_size
            path = self.root / V30_VIDEO.format(video_key=key, chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration at every encoder start otherwise
        options = self.codec_options
        if options is None:
            options = {"preset": "12", "crf": "30", "g": "2"} if self.codec == "libsvtav1" else {"g": "2"}
        container = av.open(str(path), "w")
        stream = container.add_stream(self.codec, rate=self.fps, options=dict(options))
        stream.height, stream.width = self.shapes[key]
        stream.pix_fmt = "yuv420p"
        return _VideoOut(path, container, stream, chunk, file)

    def _write_video(self, key: str, episode: int, frames, length: int) -> dict:
        import av

        frames = iter(frames)
        first = np.asarray(next(frames), np.uint8)
        self.shapes.setdefault(key, first.shape[:2])
        out = self._videos.get(key)
        if out is None:
            out = self._videos[key] = self._open_video(key, episode)
        start = out.frames
        for pixels in _chain(first, frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, np.uint8), format="rgb24")
            frame.pts = out.frames
            for packet in out.stream.encode(frame):
                out.container.mux(packet)
            out.frames += 1
        if out.frames - start != length:
            raise ValueError(f"camera {key!r} gave {out.frames - start} frames for an episode of {length} steps")
        info = {
            f"videos/{key}/chunk_index": out.chunk,
            f"videos/{key}/file_index": out.file,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": out.frames / self.fps,
        }
        if self.version == "v2.1" or out.frames >= self.frames_per_video_file:
            self._close_video(key)
        return info

    def _close_video(self, key: str) -> None:
        out = self._videos.pop(key)
        for packet in out.stream.encode():
            out.container.mux(packet)
        out.container.close()
        self._video_files[key] += 1

    # ---- metadata ---------------------------------------------------------------------------------------
    def close(self) -> Path:
        for key in list(self._videos):
            self._close_video(key)
        self._flush_data()
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "info.json").write_text(json.dumps(self._info(), indent=4))
        tasks = sorted(self.tasks, key=self.tasks.get)
        if self.version == "v2.1":
            _jsonl(meta / "tasks.jsonl", [{"task_index": self.tasks[t], "task": t} for t in tasks])
            _jsonl(
                meta / "episodes.jsonl",
                [{k: e[k] for k in ("episode_index", "tasks", "length")} for e in self.episodes],
            )
            _jsonl(
                meta / "episodes_stats.jsonl",
                [
                    {"episode_index": e["episode_index"], "stats": self._stats([s], [a])}
                    for e, s, a in zip(self.episodes, self.states, self.actions)
                ],
            )
        else:
            table = pa.table(
                {
                    "task_index": pa.array([self.tasks[t] for t in tasks], pa.int64()),
                    "task": pa.array(tasks, pa.string()),
                }
            )
            table = table.replace_schema_metadata({"pandas": json.dumps(_TASKS_PANDAS)})
            pq.write_table(table, meta / "tasks.parquet")
            rows = [{**e, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0} for e in self.episodes]
            episodes = meta / "episodes" / "chunk-000" / "file-000.parquet"
            episodes.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), episodes)
        if self.write_stats:
            (meta / "stats.json").write_text(json.dumps(self._stats(self.states, self.actions), indent=4))
        return self.root

    def __enter__(self) -> "LeRobotWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()

    def _stats(self, states: list[np.ndarray], actions: list[np.ndarray]) -> dict:
        out = {}
        for key, values in ((self.state_key, states), (self.action_key, actions)):
            stats = ArrayStatistics.from_values(np.concatenate(values))
            out[key] = {
                "min": stats.min.tolist(),
                "max": stats.max.tolist(),
                "mean": stats.mean.tolist(),
                "std": stats.std.tolist(),
                "count": [int(sum(len(v) for v in values))],
                "q01": stats.p01.tolist(),
                "q99": stats.p99.tolist(),
            }
        return out

    def _info(self) -> dict:
        def vector(key: str, dim: int) -> dict:
            return {"dtype": "float32", "shape": [dim], "names": None}

        features = {
            self.state_key: vector(self.state_key, self.states[0].shape[1] if self.states else 0),
            self.action_key: vector(self.action_key, self.actions[0].shape[1] if self.actions else 0),
        }
        for key in self.cameras:
            height, width = self.shapes.get(key, (0, 0))
            feature = {
                "dtype": "video" if self.video else "image",
                "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
            }
            if self.video:
                feature["info"] = {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": _codec_name(self.codec),
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                }
            features[key] = feature
        for name, dtype in (
            ("timestamp", "float32"),
            ("frame_index", "int64"),
            ("episode_index", "int64"),
            ("index", "int64"),
            ("task_index", "int64"),
        ):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        info = {
            "codebase_version": self.version,
            "robot_type": None,
            "total_episodes": len(self.episodes),
            "total_frames": self.total,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "features": features,
        }
        videos = self.video and bool(self.cameras)
        if self.version == "v2.1":
            info.update(
                total_chunks=(len(self.episodes) - 1) // self.chunks_size + 1,
                total_videos=len(self.episodes) * len(self.cameras) if videos else 0,
                data_path=V21_DATA,
                video_path=V21_VIDEO if videos else None,
            )
        else:
            info.update(
                data_files_size_in_mb=100,
                video_files_size_in_mb=200,
                data_path=V30_DATA,
                video_path=V30_VIDEO if videos else None,
            )
        return info


def _chain(first, rest):
    yield first
    yield from rest


def _lists(values: np.ndarray) -> pa.Array:
    """(T, D) float32 -> a list<float32> column (LeRobot's vector features)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]).cast(pa.list_(pa.float32()))


def _codec_name(codec: str) -> str:
    return {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "libx265": "hevc"}.get(codec, codec)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
