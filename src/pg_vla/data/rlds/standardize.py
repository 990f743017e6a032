"""Per-dataset standardization: a raw RLDS trajectory -> pg-vla's common step form (tensorflow).

A trajectory is an episode's steps batched along time: every tensor has leading dim T. Each function
returns {"observation": {"image_<role>": (T,) encoded bytes, "proprio": (T, P)}, "action": (T, A),
"language_instruction": (T,) string}, following the Open X-Embodiment / Octo conventions that the
published statistics and checkpoints rely on. `standardize` adds `observation/scene_state` (T, K) for
datasets with a scene state, whatever their function.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pg_vla.data.rlds.dataset_configs import CAMERA_ROLES, DatasetConfig


def binarize_gripper_actions(gripper: tf.Tensor, open_above: float = 0.95, closed_below: float = 0.05) -> tf.Tensor:
    """Continuous gripper command (T,) -> 1 open / 0 closed.

    Values above `open_above` are open, below `closed_below` closed; a value in between takes the
    next decided value (the gripper is on its way there); a trailing undecided run keeps the last
    raw value.
    """
    decided = tf.logical_or(gripper > open_above, gripper < closed_below)
    is_open = tf.cast(gripper > open_above, tf.float32)

    def step(carry: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        return tf.where(decided[i], is_open[i], carry)

    return tf.scan(step, tf.range(tf.shape(gripper)[0]), initializer=tf.cast(gripper[-1], tf.float32), reverse=True)


def relative_to_absolute_gripper(gripper: tf.Tensor, threshold: float = 0.1) -> tf.Tensor:
    """Relative gripper commands (T,) (+1 close, -1 open, 0 no change) -> absolute 1 open / 0 closed.

    Commands above `threshold` close, below -threshold open, others keep the previous state. Before
    the first command the gripper is taken to be in the opposite state of that command (open when
    the episode has no command at all).
    """
    signed = tf.where(gripper < -threshold, 1.0, tf.where(gripper > threshold, -1.0, 0.0))  # +1 open, -1 closed
    has_command = tf.reduce_any(signed != 0)
    first = tf.gather(signed, tf.argmax(tf.cast(signed != 0, tf.int32)))
    start = tf.where(has_command, -first, 1.0)

    def step(carry: tf.Tensor, command: tf.Tensor) -> tf.Tensor:
        return tf.where(command == 0, carry, command)

    state = tf.scan(step, signed, initializer=start)
    return (state + 1.0) / 2.0


def _path(tree: dict, path: str) -> tf.Tensor:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _images(traj: dict, cfg: DatasetConfig) -> dict[str, tf.Tensor]:
    length = tf.shape(tf.nest.flatten(traj["action"])[0])[0]  # fractal's raw action is a dict
    out = {}
    for role in CAMERA_ROLES:
        key = cfg.image_keys.get(role)
        present = key is not None and key in traj["observation"]  # the reader drops unused cameras
        out[f"image_{role}"] = traj["observation"][key] if present else tf.fill([length], "")
    return out


def standardize_bridge(traj: dict, cfg: DatasetConfig) -> dict:
    """BridgeData V2: binarized gripper; movement relabeled with reached states; last step dropped."""
    state = tf.cast(traj["observation"]["state"], tf.float32)  # (T, 7) xyz, rpy, gripper opening
    gripper = binarize_gripper_actions(traj["action"][:, -1])  # (T,)
    movement = state[1:, :6] - state[:-1, :6]  # (T-1, 6): the motion the robot actually made
    action = tf.concat([movement, gripper[:-1, None]], axis=1)
    images = {k: v[:-1] for k, v in _images(traj, cfg).items()}
    return {
        "observation": {**images, "proprio": state[:-1]},
        "action": action,
        "language_instruction": _path(traj, cfg.language_key)[:-1],
    }


def standardize_fractal(traj: dict, cfg: DatasetConfig) -> dict:
    """fractal / RT-1: relative gripper command made absolute; proprio = pose (xyz, quat xyzw) + closed."""
    act = traj["action"]
    gripper = relative_to_absolute_gripper(act["gripper_closedness_action"][:, 0])
    action = tf.concat([act["world_vector"], act["rotation_delta"], gripper[:, None]], axis=1)
    obs = traj["observation"]
    proprio = tf.concat([obs["base_pose_tool_reached"], obs["gripper_closed"]], axis=1)
    return {
        "observation": {**_images(traj, cfg), "proprio": tf.cast(proprio, tf.float32)},
        "action": tf.cast(action, tf.float32),
        "language_instruction": _path(traj, cfg.language_key),
    }


def standardize_metaworld(traj: dict, cfg: DatasetConfig) -> dict:
    """Meta-World demonstrations: stored proprio (hand xyz, gripper opening) and clipped 4-D actions as they are."""
    return {
        "observation": {**_images(traj, cfg), "proprio": tf.cast(traj["observation"]["state"], tf.float32)},
        "action": tf.cast(traj["action"], tf.float32),
        "language_instruction": _path(traj, cfg.language_key),
    }


STANDARDIZE_FNS: dict[str, Callable[[dict, DatasetConfig], dict]] = {
    "bridge": standardize_bridge,
    "fractal": standardize_fractal,
    "metaworld": standardize_metaworld,
}


def standardize(traj: dict, cfg: DatasetConfig) -> dict:
    if cfg.standardize_fn not in STANDARDIZE_FNS:
        raise ValueError(f"{cfg.name}: unknown standardization function {cfg.standardize_fn!r}")
    out = STANDARDIZE_FNS[cfg.standardize_fn](traj, cfg)
    if cfg.scene_state_key is not None:
        state = tf.cast(_path(traj["observation"], cfg.scene_state_key), tf.float32)  # (T_raw, S)
        scene = tf.gather(state, list(cfg.scene_state_indices), axis=1)  # (T_raw, K)
        length = tf.shape(out["action"])[0]  # the steps the function kept (bridge drops the last)
        out["observation"] = {**out["observation"], "scene_state": scene[:length]}
    return out
