"""Registry of RLDS dataset configs (Open X-Embodiment naming). No tensorflow here.

A config says where each camera role, the proprio state, the action and the language live in a
dataset's raw steps, which standardization function turns a raw trajectory into pg-vla's common
form, and which action dimensions get normalized. Adding an OXE dataset is one `DatasetConfig`
entry here plus one function in `standardize.py`.

Common form of a standardized step (what every standardization function returns, per trajectory):
    observation/image_<role>   encoded image bytes (JPEG/PNG), "" where the camera is absent
    observation/proprio        float32 (P,)  bridge: xyz, roll/pitch/yaw, gripper (7)
                                             fractal: xyz, quaternion xyzw, gripper closed (8)
    action                     float32 (7,)  delta xyz, delta rotation, gripper absolute (1 open, 0 closed)
    language_instruction       string
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CAMERA_ROLES = ("primary", "secondary", "wrist")


@dataclass(frozen=True)
class DatasetConfig:
    name: str  # TFDS name, the folder under the data path
    version: str  # TFDS version folder
    image_keys: dict[str, str | None]  # camera role -> observation key (None: the dataset lacks that camera)
    language_key: str  # path of the instruction in a step, "/"-separated
    proprio_encoding: str  # documents the proprio layout
    proprio_dim: int
    action_encoding: str
    action_dim: int
    standardize_fn: str  # name in standardize.STANDARDIZE_FNS
    action_normalization_mask: tuple[bool, ...]  # False: left as is (the gripper's 0..1)
    gripper_convention: str = "absolute: 1 open, 0 closed"
    extra: dict = field(default_factory=dict)  # options of the standardization function

    def __post_init__(self) -> None:
        unknown = set(self.image_keys) - set(CAMERA_ROLES)
        if unknown:
            raise ValueError(f"{self.name}: unknown camera roles {sorted(unknown)} (known: {CAMERA_ROLES})")
        if len(self.action_normalization_mask) != self.action_dim:
            raise ValueError(
                f"{self.name}: action_normalization_mask has {len(self.action_normalization_mask)} "
                f"entries for action_dim {self.action_dim}"
            )

    def config_hash(self) -> str:
        """Stable hash of everything that changes the standardized steps (keys statistics caches)."""
        payload = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


DATASET_CONFIGS: dict[str, DatasetConfig] = {
    "bridge_dataset": DatasetConfig(
        name="bridge_dataset",
        version="1.0.0",
        image_keys={"primary": "image_0", "secondary": "image_1", "wrist": None},
        language_key="language_instruction",
        proprio_encoding="pos_euler: xyz, roll/pitch/yaw, gripper opening",
        proprio_dim=7,
        action_encoding="eef delta: xyz, roll/pitch/yaw, gripper absolute",
        action_dim=7,
        standardize_fn="bridge",
        action_normalization_mask=(True,) * 6 + (False,),
    ),
    "fractal20220817_data": DatasetConfig(
        name="fractal20220817_data",
        version="0.1.0",
        image_keys={"primary": "image", "secondary": None, "wrist": None},
        language_key="observation/natural_language_instruction",
        proprio_encoding="pos_quat: xyz, quaternion xyzw, gripper closed",
        proprio_dim=8,
        action_encoding="eef delta: world_vector, rotation_delta, gripper absolute",
        action_dim=7,
        standardize_fn="fractal",
        action_normalization_mask=(True,) * 6 + (False,),
    ),
    # Meta-World scripted demonstrations (scripts/data/make_metaworld_demos.py). Actions are the
    # environment's own 4-D commands, clipped to [-1, 1]: xyz hand motion (normalized from p01/p99)
    # and the gripper effort (-1 open .. +1 close), already in the model's range and left as it is so
    # that its few discrete levels (0, 0.6, +-1) keep their meaning across tasks. The second view exists
    # only in demonstrations written with --secondary_camera (train those with camera_roles [primary, secondary]).
    "metaworld": DatasetConfig(
        name="metaworld",
        version="1.0.0",
        image_keys={"primary": "image", "secondary": "image_secondary", "wrist": None},  # secondary: optional
        language_key="language_instruction",
        proprio_encoding="hand xyz, gripper opening (Meta-World observation[0:4])",
        proprio_dim=4,
        action_encoding="hand xyz motion, gripper effort (-1 open, +1 close), clipped to [-1, 1]",
        action_dim=4,
        standardize_fn="metaworld",
        action_normalization_mask=(True, True, True, False),
        gripper_convention="effort: -1 open, +1 close (Meta-World)",
    ),
}


def dataset_folder(data_path: str | Path, cfg: DatasetConfig) -> Path:
    """Where a dataset's TFDS files live: `<data_path>/<name>/<version>`."""
    return Path(data_path) / cfg.name / cfg.version


def get_dataset_config(name: str) -> DatasetConfig:
    if name not in DATASET_CONFIGS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASET_CONFIGS))}")
    return DATASET_CONFIGS[name]


# Named mixes: dataset name -> sampling weight. Each dataset contributes by its weight whatever its size.
MIXES: dict[str, dict[str, float]] = {
    "bridge": {"bridge_dataset": 1.0},
    "fractal": {"fractal20220817_data": 1.0},
    "oxe_simple": {"fractal20220817_data": 1.0, "bridge_dataset": 1.0},
    "metaworld": {"metaworld": 1.0},
}


def get_mix(name: str) -> dict[str, float]:
    if name not in MIXES:
        raise ValueError(f"unknown dataset mix {name!r}; known mixes: {', '.join(sorted(MIXES))}")
    return MIXES[name]
