"""Trajectory transforms on tf.data: normalization, observation history, action chunks.

Shapes inside a standardized trajectory: T steps, P proprio dim, A action dim, C cond steps,
H horizon steps.

Windows. Sample t gets
    proprio  steps t-C+1 .. t      (C,)  earlier than the episode start: the first step repeated,
                                         `proprio_mask` False there
    images   steps t-C+1 .. t      (C,)  per camera, still encoded: the same window as proprio (the
                                         first frame repeated before the start); the pipeline masks
                                         those views with `proprio_mask`
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
    """Adds proprio history (T, C, P), action chunks (T, H, A) and their masks; every `image_<role>`
    (T,) encoded becomes its history (T, C) encoded, gathered before decoding so that only the frames
    a sample uses are ever decoded."""
    length = tf.shape(traj["action"])[0]
    steps = tf.range(length)[:, None]
    history = steps + tf.range(-cond_steps + 1, 1)[None, :]  # (T, C)
    past = tf.maximum(history, 0)  # (T, C): before the episode start, the first step
    chunk = steps + tf.range(horizon_steps)[None, :]  # (T, H)
    out = dict(traj)
    obs = traj["observation"]
    out["observation"] = {
        key: tf.gather(value, past) if key.startswith("image_") else value for key, value in obs.items()
    }
    out["observation"]["proprio"] = tf.gather(obs["proprio"], past)
    out["observation"]["proprio_mask"] = history >= 0
    out["action"] = tf.gather(traj["action"], tf.minimum(chunk, length - 1))
    out["action_mask"] = chunk < length
    out["step"] = tf.range(length)
    return out
