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
    observation/scene_state    float32 (K,)  only datasets with a `scene_state_key` (simulation): privileged
                                             object/goal positions, an auxiliary training target, never a model input
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
    # Privileged scene state (simulated datasets): the observation key holding the simulator's state vector
    # and the entries of it that form the scene-state target (`data` scene_state, the model's scene-state
    # readout). None / (): the dataset has none (real robots).
    scene_state_key: str | None = None
    scene_state_indices: tuple[int, ...] = ()
    scene_state_encoding: str = ""

    @property
    def scene_state_dim(self) -> int:
        return len(self.scene_state_indices)

    def __post_init__(self) -> None:
        if (self.scene_state_key is None) != (not self.scene_state_indices):
            raise ValueError(
                f"{self.name}: scene_state_key and scene_state_indices go together, got "
                f"{self.scene_state_key!r} and {self.scene_state_indices}"
            )
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
        fields = asdict(self)
        if self.scene_state_key is None:  # datasets without a scene state keep the hashes they had before it existed
            for name in ("scene_state_key", "scene_state_indices", "scene_state_encoding"):
                fields.pop(name)
        payload = json.dumps(fields, sort_keys=True)
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
        scene_state_key="full_state",
        scene_state_indices=(4, 5, 6, 36, 37, 38),
        scene_state_encoding="first object xyz (observation[4:7]), goal xyz (observation[36:39])",
    ),
}


def dataset_folder(data_path: str | Path, cfg: DatasetConfig) -> Path:
    """Where a dataset's TFDS files live: `<data_path>/<name>/<version>`."""
    return Path(data_path) / cfg.name / cfg.version


def get_dataset_config(name: str) -> DatasetConfig:
    if name not in DATASET_CONFIGS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASET_CONFIGS))}")
    return DATASET_CONFIGS[name]


def check_scene_state(configs: list[DatasetConfig]) -> int:
    """The scene-state dim K shared by every dataset of a mix; ValueError naming a dataset without one or
    dims that differ."""
    lacking = [c.name for c in configs if c.scene_state_key is None]
    if lacking:
        raise ValueError(
            f"the scene-state target needs a privileged scene state in every dataset of the mix; "
            f"{', '.join(lacking)} has none (DatasetConfig.scene_state_key): set model.scene_state_weight=0"
        )
    dims = {c.name: c.scene_state_dim for c in configs}
    if len(set(dims.values())) != 1:
        raise ValueError(f"the datasets of the mix have scene states of different sizes: {dims}")
    return next(iter(dims.values()))


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
