"""Typed configuration of the LeRobot dataset loader (no pyarrow, no PyAV at import).

A LeRobot dataset is a folder (format v3.0 or v2.1, see `pg_vla.data.lerobot.metadata`). The
feature mapping says which of its features the batch takes:

    batch            feature (defaults)                          where it lives
    images           `cameras`: feature key -> camera role       mp4 video, or images in the parquet
    proprio          `state_key` ("observation.state")           list<float> column of the data files
    actions          `action_key` ("action")                     list<float> column
    language         the task string of the row's `task_index`   meta/tasks
    tfds_id          "<folder name>:<episode_index>"

Several folders (`path` a list) with `weights` form a mix, as the RLDS mixes do: each folder keeps its
own statistics (the dict key is its folder name) and training draws every sample from folder i with
probability weights[i] / sum(weights) (default: each folder's share of the frames).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pg_vla.data.parquet.config import check_window_options
from pg_vla.data.rlds.dataset_configs import CAMERA_ROLES

VIDEO_TOLERANCE_S = 1e-4  # LeRobot's own default tolerance between a row's timestamp and its video frame


@dataclass
class LeRobotConfig:
    """What to read and how; the options shared with `ParquetConfig` mean the same there."""

    path: tuple[str, ...]  # LeRobot dataset folder(s); several form a mix
    weights: tuple[float, ...] | None = None  # sampling weight per folder (None: by frame count)
    cameras: dict[str, str] = field(default_factory=dict)  # camera feature key -> role ({}: in info.json order)
    state_key: str = "observation.state"
    action_key: str = "action"
    camera_roles: tuple[str, ...] = ("primary",)  # batch cameras, in order; a role without a feature is black
    state_dim: int | None = None  # expected state length (None: from info.json)
    action_dim: int | None = None
    video_tolerance_s: float = VIDEO_TOLERANCE_S  # |frame time - row timestamp| allowed when decoding video
    use_dataset_stats: bool = True  # meta/stats.json when it holds every statistic needed; else computed
    train: bool = True  # shuffle and repeat forever; False: one ordered pass
    image_size: int = 224
    image_resize: str = "stretch"  # or "pad" (pi0); see data/image_resize.py
    cond_steps: int = 1  # C: steps of proprio and image history (images come frame-major, see data/dataloader.py)
    horizon_steps: int = 4
    batch_size: int = 16
    skip_unlabeled: bool = True  # drop episodes whose first task string is empty
    normalization: str = "bounds"  # or mean_std (pi0), quantile (pi0.5). See normalization.py
    normalize_gripper: bool = False  # the trailing `gripper_dims` action dims keep their 0..1 unless set
    gripper_dims: int = 1
    statistics_path: str | None = None  # fixed statistics JSON (one folder only)
    statistics_dir: str | None = None  # cache folder for computed statistics (default: next to the data)
    seed: int = 0
    shuffle_buffer: int = 10_000  # frames (encoded images or video references), training only
    cycle_length: int = 4  # episodes interleaved when training
    num_workers: int = 1  # DataLoader worker processes (spawned); 0 reads in the calling process
    prefetch_batches: int = 4  # per worker

    def __post_init__(self) -> None:
        # Hydra / JSON hand lists and dicts: restore the typed values.
        self.path = (str(self.path),) if isinstance(self.path, (str, os.PathLike)) else tuple(str(p) for p in self.path)
        self.weights = None if self.weights is None else tuple(float(w) for w in self.weights)
        self.cameras = dict(self.cameras)
        self.camera_roles = tuple(self.camera_roles)
        if not self.path:
            raise ValueError("path is empty: give a LeRobot dataset folder (or several)")
        if self.weights is not None and (
            len(self.weights) != len(self.path) or min(self.weights) < 0 or sum(self.weights) <= 0
        ):
            raise ValueError(
                f"weights {self.weights} must give one non-negative weight per folder of path "
                f"({len(self.path)}), not all zero"
            )
        for role in (*self.camera_roles, *self.cameras.values()):
            if role not in CAMERA_ROLES:
                raise ValueError(f"unknown camera role {role!r}; known: {CAMERA_ROLES}")
        if not self.camera_roles:
            raise ValueError("camera_roles is empty")
        if len(set(self.cameras.values())) != len(self.cameras):
            raise ValueError(f"two cameras share a role in {self.cameras}")
        if self.statistics_path and len(self.path) > 1:
            raise ValueError("statistics_path fixes the statistics of one folder; a mix computes or reads each")
        check_window_options(self)
        if self.video_tolerance_s < 0:
            raise ValueError(f"video_tolerance_s must be >= 0, got {self.video_tolerance_s}")
        if self.num_workers < 0 or self.gripper_dims < 0 or self.prefetch_batches < 1:
            raise ValueError("num_workers and gripper_dims must be >= 0, prefetch_batches >= 1")


class LeRobotDataError(ValueError):
    """Malformed LeRobot data; names the file and, where one is concerned, the episode."""

    def __init__(self, file: str, message: str, episode: int | None = None):
        self.file, self.episode = file, episode
        where = f"{file}, episode {episode}" if episode is not None else file
        super().__init__(f"{where}: {message}")
