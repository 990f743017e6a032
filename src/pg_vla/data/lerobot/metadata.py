"""Reading a LeRobot dataset folder's metadata: formats v3.0 and v2.1, without reading any frame.

    v3.0  meta/info.json (codebase_version "v3.0", fps, features, data_path / video_path templates
          with {chunk_index}, {file_index}, {video_key}), meta/tasks.parquet (task_index, task),
          meta/episodes/chunk-*/file-*.parquet (per episode: length, data/chunk_index, data/file_index,
          videos/<key>/{chunk_index, file_index, from_timestamp}); a data file holds many episodes
          (found by its episode_index column), a video file many episodes back to back (an episode
          starts at its from_timestamp).
    v2.1  meta/info.json (templates with {episode_chunk}, {episode_index}, {video_key}; chunk =
          episode_index // chunks_size), meta/tasks.jsonl, meta/episodes.jsonl; one data file and one
          video per camera for each episode, starting at time 0.
    both  meta/stats.json when present: per feature min, max, mean, std, count (and q01, q99 in newer
          datasets). A camera feature has dtype "video" (mp4 files) or "image" (a struct {bytes, path}
          column of the data files).

Every data file's schema is checked for the mapped columns and every video file for existence when
the folder is opened, so a broken folder fails before training starts, naming file and episode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pg_vla.data.lerobot.config import LeRobotConfig, LeRobotDataError

CAMERA_DTYPES = ("video", "image")
VERSIONS = ("v3.0", "v2.1")


@dataclass(frozen=True)
class EpisodeMeta:
    index: int  # episode_index
    length: int
    data_file: Path
    videos: dict[str, tuple[Path, float]]  # video camera key -> (mp4 file, the episode's start time in it)


@dataclass
class DatasetMeta:
    root: Path
    name: str  # the statistics' key: the folder name
    version: str
    fps: float
    features: dict[str, dict]
    tasks: dict[int, str]  # task_index -> task string
    episodes: list[EpisodeMeta]
    stats: dict | None  # meta/stats.json

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in CAMERA_DTYPES]

    def is_video(self, key: str) -> bool:
        return self.features[key]["dtype"] == "video"

    def dim(self, key: str) -> int:
        shape = self.features[key].get("shape") or [0]
        return int(shape[0])

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LeRobotDataError(str(path), "missing (not a LeRobot dataset folder?)") from None
    except json.JSONDecodeError as err:
        raise LeRobotDataError(str(path), f"not valid JSON: {err}") from err


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LeRobotDataError(str(path), "missing")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metadata(root: str | Path, name: str | None = None) -> DatasetMeta:
    """info, tasks and episodes of one folder (v3.0 or v2.1)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"LeRobot dataset folder {root} does not exist")
    info = _json(root / "meta" / "info.json")
    version = str(info.get("codebase_version", ""))
    if version not in VERSIONS:
        raise LeRobotDataError(
            str(root / "meta" / "info.json"), f"codebase_version {version!r} is not one this loader reads {VERSIONS}"
        )
    features = dict(info["features"])
    stats_path = root / "meta" / "stats.json"
    stats = _json(stats_path) if stats_path.is_file() else None
    reader = _v30 if version == "v3.0" else _v21
    tasks, episodes = reader(root, info, [k for k, f in features.items() if f.get("dtype") == "video"])
    return DatasetMeta(
        root=root,
        name=name or root.name,
        version=version,
        fps=float(info["fps"]),
        features=features,
        tasks=tasks,
        episodes=episodes,
        stats=stats,
    )


def _v30(root: Path, info: dict, video_keys: list[str]) -> tuple[dict[int, str], list[EpisodeMeta]]:
    tasks_path = root / "meta" / "tasks.parquet"
    if not tasks_path.is_file():
        raise LeRobotDataError(str(tasks_path), "missing")
    table = pq.read_table(tasks_path)
    text = (
        "task"
        if "task" in table.column_names
        else next((c for c in table.column_names if pa.types.is_string(table.schema.field(c).type)), None)
    )
    if text is None or "task_index" not in table.column_names:
        raise LeRobotDataError(str(tasks_path), f"needs task_index and task columns, has {table.column_names}")
    tasks = dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotDataError(str(root / "meta" / "episodes"), "no chunk-*/file-*.parquet episode files")
    episodes = []
    for file in files:
        for row in pq.read_table(file).to_pylist():
            episode = int(row["episode_index"])
            data = root / info["data_path"].format(
                chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
            )
            videos = {}
            for key in video_keys:
                try:
                    where = {k: row[f"videos/{key}/{k}"] for k in ("chunk_index", "file_index", "from_timestamp")}
                except KeyError:
                    raise LeRobotDataError(
                        str(file), f"no videos/{key}/* columns for the video feature {key!r}", episode
                    ) from None
                path = root / info["video_path"].format(
                    video_key=key, chunk_index=where["chunk_index"], file_index=where["file_index"]
                )
                videos[key] = (path, float(where["from_timestamp"]))
            episodes.append(EpisodeMeta(episode, int(row["length"]), data, videos))
    episodes.sort(key=lambda e: e.index)
    return tasks, episodes


def _v21(root: Path, info: dict, video_keys: list[str]) -> tuple[dict[int, str], list[EpisodeMeta]]:
    tasks = {int(r["task_index"]): r["task"] for r in _jsonl(root / "meta" / "tasks.jsonl")}
    size = int(info.get("chunks_size", 1000))
    episodes = []
    for row in _jsonl(root / "meta" / "episodes.jsonl"):
        episode = int(row["episode_index"])
        chunk = episode // size
        data = root / info["data_path"].format(episode_chunk=chunk, episode_index=episode)
        videos = {
            key: (root / info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=episode), 0.0)
            for key in video_keys
        }
        episodes.append(EpisodeMeta(episode, int(row["length"]), data, videos))
    episodes.sort(key=lambda e: e.index)
    return tasks, episodes


def camera_features(meta: DatasetMeta, cfg: LeRobotConfig) -> dict[str, str | None]:
    """batch camera role -> camera feature key (None: black, masked) under `cfg.cameras`.

    An empty `cfg.cameras` gives the folder's camera features, in info.json order, the roles of
    `camera_roles` in order."""
    available = meta.camera_keys
    if cfg.cameras:
        unknown = [k for k in cfg.cameras if k not in available]
        if unknown:
            raise LeRobotDataError(
                str(meta.root / "meta" / "info.json"),
                f"cameras maps {unknown}, which are not camera features; the folder has {available}",
            )
        by_role = {role: key for key, role in cfg.cameras.items()}
    else:
        by_role = dict(zip(cfg.camera_roles, available))
    return {role: by_role.get(role) for role in cfg.camera_roles}


def check_files(meta: DatasetMeta, columns: list[str]) -> None:
    """Every data file has `columns`; every video file of a used camera exists. Errors name the first
    episode that needs the file."""
    seen: set[Path] = set()
    for episode in meta.episodes:
        if episode.data_file in seen:
            continue
        seen.add(episode.data_file)
        if not episode.data_file.is_file():
            raise LeRobotDataError(str(episode.data_file), "data file is missing", episode.index)
        names = pq.read_schema(episode.data_file).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise LeRobotDataError(
                str(episode.data_file), f"column(s) {missing} missing; the file has {names}", episode.index
            )


def check_videos(meta: DatasetMeta, keys: list[str]) -> None:
    for episode in meta.episodes:
        for key in keys:
            path = episode.videos[key][0]
            if not path.is_file():
                raise LeRobotDataError(str(path), f"video file of camera {key!r} is missing", episode.index)
