"""Trajectory transforms on tf.data: normalization, observation history, action chunks.

Shapes inside a standardized trajectory: T steps, P proprio dim, A action dim, C cond steps,
H horizon steps.

Windows. Sample t gets
    proprio  steps t-C+1 .. t      (C,)  earlier than the episode start: the first step repeated,
                                         `proprio_mask` False there
    actions  steps t .. t+H-1      (H,)  past the episode end: the last action repeated,
                                         `action_mask` False there
Repeating the last action (rather than zeros) keeps a padded chunk a plausible command sequence
(the robot holds its last motion / gripper state); the mask tells the loss which entries are real.
"""

from __future__ import annotations

import tensorflow as tf

from pg_vla.data.normalization import Normalizer


def normalize_tf(x: tf.Tensor, normalizer: Normalizer) -> tf.Tensor:
    """The tensorflow twin of `Normalizer.normalize`: the same table (`NormalizationParams`), in float32."""
    params = normalizer.params
    y = (x - tf.constant(params.offset, tf.float32)) * tf.constant(params.gain, tf.float32) + tf.constant(
        params.bias, tf.float32
    )
    if params.clip:
        y = tf.clip_by_value(y, -1.0, 1.0)
    return tf.where(tf.constant(params.mask), y, x)


def add_windows(traj: dict, cond_steps: int, horizon_steps: int) -> dict:
    """Adds proprio history (T, C, P), action chunks (T, H, A) and their masks; images stay (T,)."""
    length = tf.shape(traj["action"])[0]
    steps = tf.range(length)[:, None]
    history = steps + tf.range(-cond_steps + 1, 1)[None, :]  # (T, C)
    chunk = steps + tf.range(horizon_steps)[None, :]  # (T, H)
    out = dict(traj)
    out["observation"] = dict(traj["observation"])
    out["observation"]["proprio"] = tf.gather(traj["observation"]["proprio"], tf.maximum(history, 0))
    out["observation"]["proprio_mask"] = history >= 0
    out["action"] = tf.gather(traj["action"], tf.minimum(chunk, length - 1))
    out["action_mask"] = chunk < length
    out["step"] = tf.range(length)
    return out
