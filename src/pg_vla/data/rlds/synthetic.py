"""Small synthetic RLDS datasets in the exact bridge and fractal schemas (for tests and the quickstart).

Every episode is a short pick-and-place: the end effector moves to an object, closes the gripper,
carries the object towards a place marker and (in most episodes) releases it and lifts off. The
data is physically plausible and fully determined by `seed`, the split name and the episode index:

- states integrate the actions: bridge `state[t+1, :6] = state[t, :6] + action[t, :6] + noise`
  (xyz in metres, roll/pitch/yaw in radians); fractal `base_pose_tool_reached[t+1]` applies
  `world_vector[t]` and `rotation_delta[t]` (base frame) to the pose, with unit-norm xyzw quaternions;
- bridge gripper: action 1 = open, 0 = closed, continuous with an in-between value on the step
  before each transition; the state's last entry is the gripper opening, which follows the command
  with a lag (about 1.0 open, about 0.2 closed on the object);
- fractal gripper: `gripper_closedness_action` is relative (+1 close, -1 open, 0 keep), mostly runs
  of zeros, occasionally repeated, and some episodes start with an (ineffective) open command;
  `gripper_closed` / `gripper_closedness_commanded` are the resulting state (0 open, 1 closed);
  `terminate_episode` is [1, 0, 0] on the last step and [0, 1, 0] before;
- images are rendered scenes (table, object, place marker, end effector with two fingers whose gap
  shows the gripper opening) seen by one or more cameras, so they change as the robot moves and the
  object is carried; bridge cameras flagged absent by `has_image_k` are all-zero, as in the release;
- language instructions come from a small task set; a configurable fraction of the episodes have an
  empty instruction (and a zero embedding, `has_language=False` for bridge). Embeddings are fixed
  pseudo-random unit vectors per instruction.

`make_synthetic_bridge` / `make_synthetic_fractal` write the datasets with `writer.write_rlds_dataset`
(episodes are generated lazily, one at a time); `bridge_episode` / `fractal_episode` rebuild any
single episode exactly, which lets tests compare what was written with what is read back.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pg_vla.data.rlds.schemas import (
    BRIDGE_IMAGE_KEYS,
    BRIDGE_IMAGE_SIZE,
    BRIDGE_NAME,
    BRIDGE_VERSION,
    FRACTAL_ATTRIBUTE_NAMES,
    FRACTAL_IMAGE_SIZE,
    FRACTAL_NAME,
    FRACTAL_VERSION,
    LANGUAGE_EMBEDDING_DIM,
)

BRIDGE_INSTRUCTIONS = (
    "put cup from counter or drying rack into sink",
    "put the spoon on the towel",
    "put eggplant into pot or pan",
    "move the red block to the left side of the table",
    "put corn in pot which is in sink",
    "pick up the blue cloth and put it on the stove",
)
FRACTAL_INSTRUCTIONS = (
    "pick coke can",
    "move blue chip bag near apple",
    "place green can upright",
    "pick rxbar chocolate from bottom drawer and place on counter",
    "move sponge near water bottle",
    "knock redbull can over",
)

DEFAULT_SPLITS = ("train", "val")
DEFAULT_EMPTY_LANGUAGE_FRACTION = {BRIDGE_NAME: 0.25, FRACTAL_NAME: 0.0}

_BRIDGE_TABLE_Z = 0.0
_FRACTAL_TABLE_Z = 0.55
# Fractal reference orientation (xyzw): close to the mean end-effector orientation of the release.
_FRACTAL_Q_NOMINAL = np.array([-0.3, 0.6, 0.1, 0.25])


# --------------------------------------------------------------------------------------------------
# public API


def make_synthetic_bridge(
    data_dir: str | Path,
    *,
    episodes_per_split: int = 8,
    splits: Sequence[str] = DEFAULT_SPLITS,
    min_steps: int = 10,
    max_steps: int = 20,
    image_size: tuple[int, int] = BRIDGE_IMAGE_SIZE,
    num_shards: int = 2,
    seed: int = 0,
    empty_language_fraction: float = DEFAULT_EMPTY_LANGUAGE_FRACTION[BRIDGE_NAME],
    overwrite: bool = False,
) -> Path:
    """Write a synthetic `bridge_dataset` 1.0.0 to `<data_dir>/bridge_dataset/1.0.0` and return that folder.

    Each split gets `episodes_per_split` episodes of `min_steps..max_steps` steps (uniform per
    episode) in `min(num_shards, episodes_per_split)` shards; images are (height, width) = `image_size`.
    """
    from pg_vla.data.rlds.schemas import bridge_features
    from pg_vla.data.rlds.writer import write_rlds_dataset

    kwargs = _check_args(
        episodes_per_split, splits, min_steps, max_steps, image_size, num_shards, empty_language_fraction
    )
    return write_rlds_dataset(
        data_dir,
        BRIDGE_NAME,
        BRIDGE_VERSION,
        bridge_features(kwargs["image_size"]),
        {split: iter_bridge_episodes(split, episodes_per_split, seed=seed, **kwargs) for split in splits},
        num_shards=min(num_shards, episodes_per_split),
        description="Synthetic episodes in the BridgeData V2 (bridge_dataset 1.0.0) schema.",
        overwrite=overwrite,
    )


def make_synthetic_fractal(
    data_dir: str | Path,
    *,
    episodes_per_split: int = 8,
    splits: Sequence[str] = DEFAULT_SPLITS,
    min_steps: int = 10,
    max_steps: int = 20,
    image_size: tuple[int, int] = FRACTAL_IMAGE_SIZE,
    num_shards: int = 2,
    seed: int = 0,
    empty_language_fraction: float = DEFAULT_EMPTY_LANGUAGE_FRACTION[FRACTAL_NAME],
    overwrite: bool = False,
) -> Path:
    """Write a synthetic `fractal20220817_data` 0.1.0 to `<data_dir>/fractal20220817_data/0.1.0`.

    Same arguments as `make_synthetic_bridge`; returns the dataset folder.
    """
    from pg_vla.data.rlds.schemas import fractal_features
    from pg_vla.data.rlds.writer import write_rlds_dataset

    kwargs = _check_args(
        episodes_per_split, splits, min_steps, max_steps, image_size, num_shards, empty_language_fraction
    )
    return write_rlds_dataset(
        data_dir,
        FRACTAL_NAME,
        FRACTAL_VERSION,
        fractal_features(kwargs["image_size"]),
        {split: iter_fractal_episodes(split, episodes_per_split, seed=seed, **kwargs) for split in splits},
        num_shards=min(num_shards, episodes_per_split),
        description="Synthetic episodes in the fractal / RT-1 (fractal20220817_data 0.1.0) schema.",
        overwrite=overwrite,
    )


def iter_bridge_episodes(split: str, num_episodes: int, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Lazily yield episodes 0..num_episodes-1 of `split` (keyword arguments as `bridge_episode`)."""
    for index in range(num_episodes):
        yield bridge_episode(split, index, **kwargs)


def iter_fractal_episodes(split: str, num_episodes: int, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Lazily yield episodes 0..num_episodes-1 of `split` (keyword arguments as `fractal_episode`)."""
    for index in range(num_episodes):
        yield fractal_episode(split, index, **kwargs)


def bridge_episode(
    split: str,
    index: int,
    *,
    seed: int = 0,
    min_steps: int = 10,
    max_steps: int = 20,
    image_size: tuple[int, int] = BRIDGE_IMAGE_SIZE,
    empty_language_fraction: float = DEFAULT_EMPTY_LANGUAGE_FRACTION[BRIDGE_NAME],
) -> dict[str, Any]:
    """Episode `index` of `split`, as the dict the bridge schema encodes (images as uint8 arrays)."""
    rng = _episode_rng(BRIDGE_NAME, seed, split, index)
    num_steps = int(rng.integers(min_steps, max_steps + 1))
    plan = _plan(
        rng,
        num_steps,
        start=[rng.uniform(0.24, 0.34), rng.uniform(-0.08, 0.08), rng.uniform(0.10, 0.16)],
        x_range=(0.20, 0.40),
        y_range=(-0.14, 0.14),
        table_z=_BRIDGE_TABLE_Z,
    )

    # Actions and states: xyz/rpy deltas integrated into the state, gripper 1 open / 0 closed.
    gripper_cmd = np.ones(num_steps)
    gripper_cmd[plan.t_grasp - 1] = rng.uniform(0.3, 0.7)
    gripper_cmd[plan.t_grasp : plan.t_release - 1] = 0.0
    if plan.t_release <= num_steps:
        gripper_cmd[plan.t_release - 1] = rng.uniform(0.3, 0.7)
    rpy_goal = np.array([rng.normal(0, 0.05), rng.normal(-0.1, 0.05), rng.uniform(-0.5, 0.5)])
    state = np.zeros((num_steps, 7))
    action = np.zeros((num_steps, 7))
    state[0, :3] = plan.start
    state[0, 3:6] = rpy_goal + np.array([rng.normal(0, 0.05), rng.normal(0, 0.05), rng.uniform(-0.4, 0.4)])
    state[0, 6] = 1.0 + rng.normal(0, 0.003)
    for t in range(num_steps):
        action[t, :3] = np.clip(0.45 * (plan.target(t) - state[t, :3]), -0.02, 0.02) + rng.normal(0, 0.002, 3)
        action[t, 3:6] = 0.25 * (rpy_goal - state[t, 3:6]) + rng.normal(0, 0.01, 3)
        action[t, 6] = gripper_cmd[t]
        if t + 1 < num_steps:
            state[t + 1, :6] = state[t, :6] + action[t, :6] + rng.normal(0, 5e-4, 6)
            opening_goal = 0.2 + 0.8 * gripper_cmd[t]  # the object stops the fingers at about 0.2
            state[t + 1, 6] = state[t, 6] + 0.7 * (opening_goal - state[t, 6]) + rng.normal(0, 0.003)
    opening = np.clip(state[:, 6], 0.0, 1.1)

    instruction = _instruction(BRIDGE_INSTRUCTIONS, rng, index, empty_language_fraction)
    embedding = language_embedding(instruction)
    has_image = [True] + [bool(rng.random() < p) for p in (0.75, 0.5, 0.2)]
    object_color = tuple(int(c) for c in rng.integers(40, 230, 3))
    views = [
        _View(rng, image_size, object_color, center=(0.30, 0.0), extent=0.42, angle=angle, tilt=tilt)
        for angle, tilt in ((0.0, 0.6), (0.5, 0.9), (-0.6, 0.9), (0.0, 0.0))
    ]
    object_xyz = plan.object_positions(state[:, :3])
    steps = []
    for t in range(num_steps):
        images = {}
        for key, view, present in zip(BRIDGE_IMAGE_KEYS, views, has_image):
            images[key] = (
                view.render(state[t, :3], state[t, 5], opening[t], object_xyz[t], plan.place)
                if present
                else np.zeros((*image_size, 3), np.uint8)
            )
        steps.append(
            {
                "observation": {**images, "state": state[t].astype(np.float32)},
                "action": action[t].astype(np.float32),
                "discount": np.float32(1.0),
                "reward": np.float32(t == num_steps - 1),
                "is_first": t == 0,
                "is_last": t == num_steps - 1,
                "is_terminal": t == num_steps - 1,
                "language_instruction": instruction,
                "language_embedding": embedding,
            }
        )
    return {
        "steps": steps,
        "episode_metadata": {
            "file_path": f"synthetic/{BRIDGE_NAME}/{split}/episode_{index:06d}.npy",
            "episode_id": np.int32(index),
            "has_language": bool(instruction),
            **{f"has_image_{k}": has_image[k] for k in range(len(BRIDGE_IMAGE_KEYS))},
        },
    }


def fractal_episode(
    split: str,
    index: int,
    *,
    seed: int = 0,
    min_steps: int = 10,
    max_steps: int = 20,
    image_size: tuple[int, int] = FRACTAL_IMAGE_SIZE,
    empty_language_fraction: float = DEFAULT_EMPTY_LANGUAGE_FRACTION[FRACTAL_NAME],
) -> dict[str, Any]:
    """Episode `index` of `split`, as the dict the fractal schema encodes (image as a uint8 array)."""
    rng = _episode_rng(FRACTAL_NAME, seed, split, index)
    num_steps = int(rng.integers(min_steps, max_steps + 1))
    plan = _plan(
        rng,
        num_steps,
        start=[rng.uniform(0.45, 0.65), rng.uniform(-0.2, 0.1), rng.uniform(0.8, 0.95)],
        x_range=(0.45, 0.75),
        y_range=(-0.25, 0.15),
        table_z=_FRACTAL_TABLE_Z,
    )

    # Relative gripper commands: +1 close, -1 open, 0 keep; the closed state follows them.
    gripper_cmd = np.zeros(num_steps)
    if rng.random() < 0.25:
        gripper_cmd[0] = -1.0  # an "open" command while already open: no change
    gripper_cmd[plan.t_grasp - 1] = 1.0
    if rng.random() < 0.5 and plan.t_grasp < plan.t_release - 1:
        gripper_cmd[plan.t_grasp] = 1.0
    if plan.t_release <= num_steps:
        gripper_cmd[plan.t_release - 1] = -1.0
        if rng.random() < 0.5 and plan.t_release < num_steps:
            gripper_cmd[plan.t_release] = -1.0
    closed = np.zeros(num_steps)
    for t in range(1, num_steps):
        previous = gripper_cmd[t - 1]
        closed[t] = 1.0 if previous > 0 else 0.0 if previous < 0 else closed[t - 1]

    q_goal = _quat_normalize(_quat_mul(_quat_from_rotvec(rng.normal(0, 0.15, 3)), _quat_normalize(_FRACTAL_Q_NOMINAL)))
    pose = np.zeros((num_steps, 7))
    world_vector = np.zeros((num_steps, 3))
    rotation_delta = np.zeros((num_steps, 3))
    pose[0, :3] = plan.start
    pose[0, 3:] = _quat_normalize(_quat_mul(_quat_from_rotvec(rng.normal(0, 0.25, 3)), q_goal))
    for t in range(num_steps):
        world_vector[t] = np.clip(0.4 * (plan.target(t) - pose[t, :3]), -0.05, 0.05) + rng.normal(0, 0.003, 3)
        rotation_delta[t] = np.clip(0.3 * _rotvec_between(pose[t, 3:], q_goal), -0.1, 0.1) + rng.normal(0, 0.01, 3)
        if t + 1 < num_steps:
            pose[t + 1, :3] = pose[t, :3] + world_vector[t] + rng.normal(0, 1e-3, 3)
            turn = _quat_from_rotvec(rotation_delta[t] + rng.normal(0, 2e-3, 3))
            pose[t + 1, 3:] = _quat_normalize(_quat_mul(turn, pose[t, 3:]))
    pose[:, 3:] = _canonical_quat(pose[:, 3:])

    instruction = _instruction(FRACTAL_INSTRUCTIONS, rng, index, empty_language_fraction)
    embedding = language_embedding(instruction)
    object_color = tuple(int(c) for c in rng.integers(40, 230, 3))
    view = _View(
        rng,
        image_size,
        object_color,
        center=(0.6, -0.05),
        extent=0.55,
        angle=np.pi / 2,
        tilt=0.5,
        table_z=_FRACTAL_TABLE_Z,
    )
    object_xyz = plan.object_positions(pose[:, :3])
    workspace_bounds = np.array([[0.3, -0.4, _FRACTAL_TABLE_Z], [0.9, 0.3, 1.2], [0.0, 0.0, 0.0]], np.float32)
    orientation_box = np.array([[-0.6, -0.6, -1.0], [0.6, 0.6, 1.0]], np.float32)
    robot_box = np.array([[0.0, -0.5, 0.0], [1.0, 0.5, 1.3], [0.0, 0.0, 0.0]], np.float32)
    steps = []
    for t in range(num_steps):
        yaw = _yaw_of(pose[t, 3:])
        steps.append(
            {
                "action": {
                    "world_vector": world_vector[t].astype(np.float32),
                    "rotation_delta": rotation_delta[t].astype(np.float32),
                    "gripper_closedness_action": np.array([gripper_cmd[t]], np.float32),
                    "terminate_episode": np.array([1, 0, 0] if t == num_steps - 1 else [0, 1, 0], np.int32),
                    "base_displacement_vector": np.zeros(2, np.float32),
                    "base_displacement_vertical_rotation": np.zeros(1, np.float32),
                },
                "observation": {
                    "image": view.render(pose[t, :3], yaw, 1.0 - closed[t], object_xyz[t], plan.place),
                    "natural_language_embedding": embedding,
                    "natural_language_instruction": instruction,
                    "base_pose_tool_reached": pose[t].astype(np.float32),
                    "gripper_closed": np.array([closed[t]], np.float32),
                    "gripper_closedness_commanded": np.array([closed[t]], np.float32),
                    "height_to_bottom": np.array([pose[t, 2] - _FRACTAL_TABLE_Z], np.float32),
                    "orientation_box": orientation_box,
                    "orientation_start": pose[0, 3:].astype(np.float32),
                    "robot_orientation_positions_box": robot_box,
                    "rotation_delta_to_go": _rotvec_between(pose[t, 3:], q_goal).astype(np.float32),
                    "src_rotation": pose[t, 3:].astype(np.float32),
                    "vector_to_go": (plan.target(t) - pose[t, :3]).astype(np.float32),
                    "workspace_bounds": workspace_bounds,
                },
                "is_first": t == 0,
                "is_last": t == num_steps - 1,
                "is_terminal": t == num_steps - 1,
                "reward": np.float32(t == num_steps - 1),
            }
        )
    success = plan.t_release <= num_steps
    aspects = {
        "already_success": False,
        "feasible": True,
        "has_aspects": bool(rng.random() < 0.8),
        "success": success,
        "undesirable": False,
    }
    names = {
        "collection_mode": "teleop",
        "data_type": "synthetic",
        "env": "synthetic_table",
        "location": "synthetic_lab",
        "objects_family": "tabletop_objects",
        "task_family": instruction.split(" ")[0] if instruction else "unlabeled",
    }
    attributes = {}
    for name in FRACTAL_ATTRIBUTE_NAMES:
        attributes[name] = np.int64(zlib.crc32(names[name].encode()) % 1000)
        attributes[f"{name}_name"] = names[name]
    return {"steps": steps, "aspects": aspects, "attributes": attributes}


def language_embedding(instruction: str) -> np.ndarray:
    """A fixed pseudo-random unit vector (512,) per instruction; zeros for an empty instruction."""
    if not instruction:
        return np.zeros(LANGUAGE_EMBEDDING_DIM, np.float32)
    vector = np.random.default_rng(zlib.crc32(instruction.encode())).normal(size=LANGUAGE_EMBEDDING_DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# episode structure


def _check_args(
    episodes_per_split, splits, min_steps, max_steps, image_size, num_shards, empty_language_fraction
) -> dict[str, Any]:
    if episodes_per_split < 1:
        raise ValueError(f"episodes_per_split must be >= 1, got {episodes_per_split}")
    if not splits:
        raise ValueError("splits is empty")
    if not 3 <= min_steps <= max_steps:
        raise ValueError(f"need 3 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0.0 <= empty_language_fraction <= 1.0:
        raise ValueError(f"empty_language_fraction must be in [0, 1], got {empty_language_fraction}")
    height, width = (int(v) for v in image_size)
    if height < 8 or width < 8:
        raise ValueError(f"image_size must be at least 8x8, got {image_size}")
    return {
        "min_steps": int(min_steps),
        "max_steps": int(max_steps),
        "image_size": (height, width),
        "empty_language_fraction": float(empty_language_fraction),
    }


def _episode_rng(dataset: str, seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(dataset.encode()), zlib.crc32(split.encode()), int(index)])


def _instruction(choices: Sequence[str], rng: np.random.Generator, index: int, empty_fraction: float) -> str:
    # Exactly floor(n * fraction) of the first n episodes are unlabeled, spread evenly over the split.
    unlabeled = int((index + 1) * empty_fraction) > int(index * empty_fraction)
    choice = choices[int(rng.integers(len(choices)))]
    return "" if unlabeled else choice


class _Plan:
    """Where the end effector heads at each step, and where the object is."""

    def __init__(self, start, obj, place, t_grasp, t_release, num_steps):
        self.start, self.obj, self.place = start, obj, place
        self.t_grasp, self.t_release, self.num_steps = t_grasp, t_release, num_steps

    def target(self, t: int) -> np.ndarray:
        if t < self.t_grasp:
            # Approach above the object, then descend onto it.
            return self.obj + np.array([0.0, 0.0, 0.05 if t < self.t_grasp // 2 else 0.01])
        if t < self.t_release:
            return self.place + np.array([0.0, 0.0, 0.06])
        return self.place + np.array([0.0, 0.0, 0.15])

    def object_positions(self, ee_xyz: np.ndarray) -> np.ndarray:
        """Object xyz per step: resting, then carried below the fingers, then dropped where released."""
        positions = np.repeat(self.obj[None], self.num_steps, axis=0)
        for t in range(self.t_grasp + 1, self.num_steps):
            if t <= self.t_release:
                positions[t] = ee_xyz[t] - np.array([0.0, 0.0, 0.02])
            else:
                positions[t] = np.array([*positions[t - 1, :2], self.obj[2]])
        return positions


def _plan(rng: np.random.Generator, num_steps: int, start, x_range, y_range, table_z: float) -> _Plan:
    obj = np.array([rng.uniform(*x_range), rng.uniform(*y_range), table_z + 0.02])
    for _ in range(100):
        place = np.array([rng.uniform(*x_range), rng.uniform(*y_range), table_z + 0.02])
        if np.linalg.norm(place[:2] - obj[:2]) > 0.08:
            break
    t_grasp = min(max(1, int(round(num_steps * rng.uniform(0.35, 0.5)))), num_steps - 2)
    released = rng.random() < 0.75
    t_release = (
        min(max(t_grasp + 2, int(round(num_steps * rng.uniform(0.7, 0.85)))), num_steps) if released else num_steps + 1
    )
    return _Plan(np.asarray(start, float), obj, place, t_grasp, t_release, num_steps)


# --------------------------------------------------------------------------------------------------
# rendering


class _View:
    """A camera looking down at the table: world xy -> pixels, height lifts points up the image."""

    def __init__(
        self,
        rng: np.random.Generator,
        image_size: tuple[int, int],
        object_color: tuple[int, int, int],
        center: tuple[float, float],
        extent: float,
        angle: float,
        tilt: float,
        table_z: float = 0.0,
    ):
        self.height, self.width = image_size
        self.center = np.asarray(center, float)
        self.scale = min(self.height, self.width) / extent  # pixels per metre
        self.angle, self.tilt, self.table_z = angle, tilt, table_z
        self.object_color = object_color
        self.background = self._background(rng)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        base = rng.uniform(120, 210, 3)
        rows = np.linspace(-1.0, 1.0, self.height)[:, None, None]
        cols = np.linspace(-1.0, 1.0, self.width)[None, :, None]
        image = base + 25.0 * rows * np.array([1.0, 0.6, 0.2]) + 15.0 * cols * np.array([0.2, 0.5, 1.0])
        return np.clip(image, 0, 255).astype(np.uint8)

    def project(self, xyz: np.ndarray) -> tuple[float, float]:
        dx, dy = xyz[0] - self.center[0], xyz[1] - self.center[1]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        u = self.width / 2 + self.scale * (cos * dy - sin * dx)
        v = self.height / 2 + self.scale * (cos * dx + sin * dy) - self.tilt * self.scale * (xyz[2] - self.table_z)
        return float(u), float(v)

    def render(
        self, ee_xyz: np.ndarray, yaw: float, opening: float, object_xyz: np.ndarray, place_xyz: np.ndarray
    ) -> np.ndarray:
        image = Image.fromarray(self.background)
        draw = ImageDraw.Draw(image)
        unit = max(1.0, self.scale * 0.02)  # about 2 cm in pixels
        pu, pv = self.project(place_xyz)
        draw.rectangle(
            [pu - 2.2 * unit, pv - 1.6 * unit, pu + 2.2 * unit, pv + 1.6 * unit],
            outline=(30, 30, 160),
            width=max(1, int(unit / 3)),
        )
        ou, ov = self.project(object_xyz)
        draw.rectangle([ou - unit, ov - unit, ou + unit, ov + unit], fill=self.object_color)
        # End effector: shadow on the table, body, and two fingers `opening` apart across the yaw axis.
        su, sv = self.project(np.array([ee_xyz[0], ee_xyz[1], self.table_z]))
        draw.ellipse([su - unit, sv - 0.5 * unit, su + unit, sv + 0.5 * unit], fill=(70, 70, 70))
        eu, ev = self.project(ee_xyz)
        draw.ellipse([eu - 0.8 * unit, ev - 0.8 * unit, eu + 0.8 * unit, ev + 0.8 * unit], fill=(235, 235, 235))
        across = np.array([np.cos(yaw + self.angle), np.sin(yaw + self.angle)])
        along = np.array([-across[1], across[0]])
        gap = (0.4 + 1.2 * float(np.clip(opening, 0.0, 1.1))) * unit
        for side in (-1.0, 1.0):
            root = np.array([eu, ev]) + side * gap * across
            tip = root + 1.6 * unit * along
            draw.line([tuple(root), tuple(tip)], fill=(200, 40, 40), width=max(1, int(unit / 2)))
        return np.asarray(image, dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------------------
# quaternions (xyzw)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def _quat_normalize(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, float) / np.linalg.norm(q)


def _quat_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = np.asarray(rotvec, float) / angle
    return np.array([*(np.sin(angle / 2) * axis), np.cos(angle / 2)])


def _rotvec_between(q_from: np.ndarray, q_to: np.ndarray) -> np.ndarray:
    """Rotation vector r (base frame) with quat(r) * q_from = q_to."""
    delta = _quat_mul(q_to, q_from * np.array([-1.0, -1.0, -1.0, 1.0]))
    if delta[3] < 0:
        delta = -delta
    sin_half = float(np.linalg.norm(delta[:3]))
    if sin_half < 1e-12:
        return np.zeros(3)
    return 2.0 * np.arctan2(sin_half, delta[3]) * delta[:3] / sin_half


def _canonical_quat(quats: np.ndarray) -> np.ndarray:
    """Keep a continuous sign along the episode (q and -q are the same rotation)."""
    quats = quats.copy()
    for t in range(1, len(quats)):
        if np.dot(quats[t], quats[t - 1]) < 0:
            quats[t] = -quats[t]
    return quats


def _yaw_of(q: np.ndarray) -> float:
    x, y, z, w = q
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
