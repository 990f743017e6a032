"""Typed configuration of the Parquet episode loader (no tensorflow, no pyarrow at import).

Parquet layout (one row per time step, episodes grouped by `is_first`):

    logical column   type                         required
    image_1          binary, encoded JPEG/PNG     yes   main camera
    image_2          binary, encoded, nullable    no    second camera (e.g. wrist); absent -> black, masked
    state            list<float>  (P,)            yes   proprio, standardized, not normalized
    action           list<float>  (A,)            yes   action, standardized, not normalized
    is_first         bool                         yes   True on an episode's first row
    is_last          bool                         no    True on an episode's last row (checked when present)
    is_terminal      bool                         no    carried, not used by the loader
    prompt           string, nullable             yes   the instruction; null/"" rows take the episode's first
    episode_id       string                       no    names the episode in batches (`tfds_id` key)

`columns` maps logical names to the file's column names (e.g. {"state": "observation.state"}); a
dotted name that is not a top-level column is looked up as a field path inside struct columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pg_vla.data.image_resize import image_resize_mode
from pg_vla.data.normalization import normalization_mode
from pg_vla.data.rlds.dataset_configs import CAMERA_ROLES

LOGICAL_COLUMNS = (
    "image_1",
    "image_2",
    "state",
    "action",
    "is_first",
    "is_last",
    "is_terminal",
    "prompt",
    "episode_id",
)
REQUIRED_COLUMNS = ("image_1", "state", "action", "is_first", "prompt")


@dataclass
class ParquetConfig:
    """What to read and how; defaults follow `RLDSConfig` where the two overlap.

    Memory per reading process (see README): `cycle_length` x (`row_group_budget_mb` + one episode)
    of decoded rows, plus `shuffle_buffer` frames holding encoded images (training only).
    """

    paths: tuple[str, ...]  # Parquet files, globs ("**" allowed) or directories (all *.parquet below)
    columns: dict[str, str] = field(default_factory=dict)  # logical name -> column name in the files
    image_1_role: str = "primary"  # camera role of image_1
    image_2_role: str | None = "wrist"  # camera role of image_2 (None: not read)
    camera_roles: tuple[str, ...] = ("primary",)  # batch cameras, in order; a role without a column is black
    dataset_name: str = "parquet"  # key of the statistics dict (checkpoints store statistics under it)
    state_dim: int | None = None  # expected state length (None: from the statistics / first row)
    action_dim: int | None = None
    train: bool = True  # shuffle and repeat forever; False: one ordered pass
    image_size: int = 224
    image_resize: str = "stretch"  # or "pad": aspect ratio kept, black padding (pi0); see data/image_resize.py
    cond_steps: int = 1  # C: steps of proprio and image history (images come frame-major, see data/dataloader.py)
    horizon_steps: int = 4
    batch_size: int = 16
    skip_unlabeled: bool = True  # drop episodes whose first prompt is empty, as the RLDS path does
    skip_non_finite: bool = False  # leave out (and count) episodes with NaN/inf state or action; False: refuse
    normalization: str = "bounds"  # or mean_std (pi0), quantile (pi0.5); gaussian = mean_std. See normalization.py
    normalize_gripper: bool = False  # the trailing `gripper_dims` action dims keep their 0..1 unless set
    gripper_dims: int = 1
    statistics_path: str | None = None  # fixed statistics JSON (e.g. the training set's for validation)
    statistics_dir: str | None = None  # cache folder for computed statistics (default: next to the data)
    seed: int = 0
    shuffle_buffer: int = 10_000  # frames (encoded images), training only
    cycle_length: int = 4  # read units (row groups) interleaved when training
    row_group_budget_mb: float = 64.0  # decoded bytes read at once per open unit; larger row groups are sliced
    num_workers: int = 1  # DataLoader worker processes (spawned); 0 reads in the calling process
    prefetch_batches: int = 4  # per worker

    def __post_init__(self) -> None:
        # Hydra / JSON hand lists and dicts: restore the typed values.
        self.paths = (self.paths,) if isinstance(self.paths, str) else tuple(str(p) for p in self.paths)
        self.camera_roles = tuple(self.camera_roles)
        self.columns = dict(self.columns)
        if not self.paths:
            raise ValueError("paths is empty: give Parquet files, globs or directories")
        unknown = sorted(set(self.columns) - set(LOGICAL_COLUMNS))
        if unknown:
            raise ValueError(f"columns maps unknown logical names {unknown}; known: {LOGICAL_COLUMNS}")
        for role in (*self.camera_roles, self.image_1_role, self.image_2_role):
            if role is not None and role not in CAMERA_ROLES:
                raise ValueError(f"unknown camera role {role!r}; known: {CAMERA_ROLES}")
        if not self.camera_roles:
            raise ValueError("camera_roles is empty")
        if self.image_1_role == self.image_2_role:
            raise ValueError(f"image_1 and image_2 both have the camera role {self.image_1_role!r}")
        check_window_options(self)
        if self.row_group_budget_mb <= 0:
            raise ValueError(f"row_group_budget_mb must be > 0, got {self.row_group_budget_mb}")
        if self.num_workers < 0 or self.gripper_dims < 0 or self.prefetch_batches < 1:
            raise ValueError("num_workers and gripper_dims must be >= 0, prefetch_batches >= 1")

    def column(self, logical: str) -> str:
        """The file column holding `logical`."""
        return self.columns.get(logical, logical)

    def role_columns(self) -> dict[str, str | None]:
        """camera role of the batch -> logical image column (None: black, masked)."""
        by_role = {self.image_1_role: "image_1"}
        if self.image_2_role is not None:
            by_role[self.image_2_role] = "image_2"
        return {role: by_role.get(role) for role in self.camera_roles}

    @property
    def row_group_budget_bytes(self) -> int:
        return int(self.row_group_budget_mb * (1 << 20))


def check_window_options(cfg) -> None:
    """The options a file source shares with `ParquetConfig` (normalization, resizing, window and batch
    sizes, the expected state/action dims), checked the same way."""
    normalization_mode(cfg.normalization)
    image_resize_mode(cfg.image_resize)
    for name in ("cond_steps", "horizon_steps", "batch_size", "image_size", "shuffle_buffer", "cycle_length"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("state_dim", "action_dim"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {getattr(cfg, name)}")


class ParquetDataError(ValueError):
    """Malformed Parquet episode data; names the file, the row (0-based within the file) and the column."""

    def __init__(self, file: str, row: int | str, column: str, message: str):
        self.file, self.row, self.column = file, row, column
        where = f"row {row}" if isinstance(row, int) else row
        super().__init__(f"{file}, {where}, column {column!r}: {message}")
