"""The quickstart's task: reach the coloured square the instruction names, grasp there and lift.

Episodes are written in the exact bridge_dataset 1.0.0 schema, so the quickstart trains through the
same RLDS pipeline as a real BridgeData V2 run. Unlike the generic synthetic episodes
(`pg_vla.data.rlds.synthetic`, whose noise and hidden per-episode goals make a large part of every
action unpredictable), every action here is a function of what the model is given:

- the table shows four coloured squares, each near a fixed spot of its own colour (jittered by up
  to `JITTER` metres per episode): the *instruction* ("reach the red square") says which one, the
  *image* (camera `image_0`) shows exactly where it is;
- the *state* (xyz, roll/pitch/yaw, gripper opening) says where the hand is and whether it has
  closed. The scripted controller moves towards a point above the square, descends onto it,
  closes the gripper once within `GRASP_RADIUS` of it and lifts; the hand keeps its orientation
  (roll/pitch/yaw stay 0, so the three rotation actions are 0 and normalize to 0). Movement per
  step is `clip(GAIN * (target - xyz), -MAX_STEP, MAX_STEP)` and the state integrates it with a
  small noise, so the relabelled movement (bridge standardization: next state
  minus state) is the commanded one up to that noise.

`make_reach_dataset` writes the train and val splits (different seeds per episode, so validation is
on held-out start poses and jitters); `reach_episode` rebuilds any one episode exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pg_vla.data.rlds.schemas import BRIDGE_IMAGE_KEYS, BRIDGE_NAME, BRIDGE_VERSION
from pg_vla.data.rlds.synthetic import language_embedding

# colour name -> (RGB, nominal square centre xy in metres)
SQUARES: dict[str, tuple[tuple[int, int, int], tuple[float, float]]] = {
    "red": ((215, 40, 40), (0.24, -0.09)),
    "green": ((40, 170, 60), (0.24, 0.09)),
    "blue": ((40, 70, 215), (0.36, -0.09)),
    "yellow": ((230, 200, 30), (0.36, 0.09)),
}
INSTRUCTION = "reach the {} square"
JITTER = 0.015  # metres: the square's offset from its nominal spot, uniform per axis per episode
GAIN = 0.4  # fraction of the remaining distance moved per step
MAX_STEP = 0.025  # metres per step and axis
HOVER, GRASP_HEIGHT, LIFT = 0.05, 0.01, 0.12  # metres above the table
DESCEND_RADIUS = 0.02  # xy distance under which the hand descends
GRASP_RADIUS = 0.012  # 3-D distance to the grasp point under which the gripper closes
POSITION_NOISE = 2e-4  # state noise per step and axis (metres)
WORKSPACE = ((0.18, 0.42), (-0.14, 0.14))  # x, y range of the start poses
_VIEW_CENTER, _VIEW_EXTENT, _VIEW_TILT = (0.30, 0.0), 0.36, 0.6


def make_reach_dataset(
    data_dir: str | Path,
    episodes: Mapping[str, int],
    *,
    num_steps: int = 24,
    image_size: int = 112,
    seed: int = 0,
    num_shards: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write `<data_dir>/bridge_dataset/1.0.0` with `episodes[split]` episodes per split; returns that folder."""
    from pg_vla.data.rlds.schemas import bridge_features
    from pg_vla.data.rlds.writer import write_rlds_dataset

    if not episodes or min(episodes.values()) < 1:
        raise ValueError(f"every split needs at least one episode, got {dict(episodes)}")
    if num_steps < 8:
        raise ValueError(f"num_steps must be >= 8 (reach, grasp and lift), got {num_steps}")
    splits = {split: _episodes(split, count, num_steps, image_size, seed) for split, count in episodes.items()}
    return write_rlds_dataset(
        data_dir,
        BRIDGE_NAME,
        BRIDGE_VERSION,
        bridge_features((image_size, image_size)),
        splits,
        num_shards=min(num_shards, min(episodes.values())),
        description="Reach-the-named-square episodes (pg-vla quickstart) in the BridgeData V2 schema.",
        overwrite=overwrite,
    )


def _episodes(split: str, count: int, num_steps: int, image_size: int, seed: int) -> Iterator[dict[str, Any]]:
    for index in range(count):
        yield reach_episode(split, index, num_steps=num_steps, image_size=image_size, seed=seed)


def reach_episode(
    split: str, index: int, *, num_steps: int = 24, image_size: int = 112, seed: int = 0
) -> dict[str, Any]:
    """Episode `index` of `split` as the dict the bridge schema encodes (images uint8 (S, S, 3))."""
    rng = np.random.default_rng([int(seed), zlib.crc32(b"reach"), zlib.crc32(split.encode()), int(index)])
    colors = list(SQUARES)
    goal_color = colors[int(rng.integers(len(colors)))]
    squares = {c: np.array(SQUARES[c][1]) + rng.uniform(-JITTER, JITTER, 2) for c in colors}
    goal = squares[goal_color]

    state = np.zeros((num_steps, 7))
    action = np.zeros((num_steps, 7))
    state[0, :3] = [rng.uniform(*WORKSPACE[0]), rng.uniform(*WORKSPACE[1]), rng.uniform(0.08, 0.14)]
    state[0, 6] = 1.0
    closed = False
    for t in range(num_steps):
        xyz = state[t, :3]
        grasp_point = np.array([*goal, GRASP_HEIGHT])
        if not closed and np.linalg.norm(xyz - grasp_point) < GRASP_RADIUS:
            closed = True
        if closed:
            target = np.array([*goal, LIFT])
        elif np.linalg.norm(xyz[:2] - goal) < DESCEND_RADIUS:
            target = grasp_point
        else:
            target = np.array([*goal, HOVER])
        action[t, :3] = np.clip(GAIN * (target - xyz), -MAX_STEP, MAX_STEP)
        action[t, 6] = 0.0 if closed else 1.0
        if t + 1 < num_steps:
            state[t + 1, :3] = xyz + action[t, :3] + rng.normal(0, POSITION_NOISE, 3)
            state[t + 1, 6] = state[t, 6] + 0.6 * (0.2 + 0.8 * action[t, 6] - state[t, 6])  # fingers lag

    instruction = INSTRUCTION.format(goal_color)
    embedding = language_embedding(instruction)
    background = _background(image_size)
    blank = np.zeros((image_size, image_size, 3), np.uint8)
    steps = []
    for t in range(num_steps):
        image = _render(background, squares, state[t, :3], state[t, 5], state[t, 6], image_size)
        steps.append(
            {
                "observation": {
                    BRIDGE_IMAGE_KEYS[0]: image,
                    **{k: blank for k in BRIDGE_IMAGE_KEYS[1:]},
                    "state": state[t].astype(np.float32),
                },
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
            "file_path": f"reach/{split}/episode_{index:06d}.npy",
            "episode_id": np.int32(index),
            "has_language": True,
            **{f"has_image_{k}": k == 0 for k in range(len(BRIDGE_IMAGE_KEYS))},
        },
    }


def _project(xyz: np.ndarray, size: int) -> tuple[float, float]:
    """World (x forward, y left, z up) -> pixel (u, v): a camera facing the table, height lifts points up."""
    scale = size / _VIEW_EXTENT
    u = size / 2 + scale * (xyz[1] - _VIEW_CENTER[1])
    v = size / 2 + scale * (xyz[0] - _VIEW_CENTER[0]) - _VIEW_TILT * scale * xyz[2]
    return float(u), float(v)


def _background(size: int) -> np.ndarray:
    rows = np.linspace(-1.0, 1.0, size)[:, None, None]
    image = np.array([150.0, 135.0, 115.0]) + 20.0 * rows * np.array([1.0, 0.8, 0.6]) + np.zeros((1, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _render(
    background: np.ndarray, squares: Mapping[str, np.ndarray], ee_xyz: np.ndarray, yaw: float, opening: float, size: int
) -> np.ndarray:
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    unit = size / _VIEW_EXTENT * 0.02  # 2 cm in pixels
    for color, xy in squares.items():
        u, v = _project(np.array([*xy, 0.0]), size)
        draw.rectangle([u - unit, v - unit, u + unit, v + unit], fill=SQUARES[color][0])
    su, sv = _project(np.array([ee_xyz[0], ee_xyz[1], 0.0]), size)  # the hand's shadow on the table
    draw.ellipse([su - 0.8 * unit, sv - 0.4 * unit, su + 0.8 * unit, sv + 0.4 * unit], fill=(60, 60, 60))
    eu, ev = _project(ee_xyz, size)
    draw.ellipse([eu - 0.7 * unit, ev - 0.7 * unit, eu + 0.7 * unit, ev + 0.7 * unit], fill=(240, 240, 240))
    across = np.array([np.cos(yaw), np.sin(yaw)])
    along = np.array([-across[1], across[0]])
    gap = (0.3 + 1.0 * float(np.clip(opening, 0.0, 1.1))) * unit
    for side in (-1.0, 1.0):
        root = np.array([eu, ev]) + side * gap * across
        draw.line([tuple(root), tuple(root + 1.4 * unit * along)], fill=(20, 20, 20), width=max(1, int(unit / 2)))
    return np.asarray(image, dtype=np.uint8).copy()
