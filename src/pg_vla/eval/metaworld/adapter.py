"""Meta-World observations <-> `pg_vla.policy.Observation` (the conventions of the `metaworld` dataset)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pg_vla.eval.adapters.base import EnvAdapter
from pg_vla.eval.metaworld.env import ACTION_DIM, MetaWorldObservation
from pg_vla.policy import Observation


class MetaWorldAdapter(EnvAdapter):
    """image -> camera "primary" (uint8), the second view (when the env renders one) -> "secondary",
    state = observation[0:4], prompt = the task's instruction; an action chunk (H, 4) -> H actions
    clipped to [-1, 1]."""

    camera_role = "primary"
    secondary_role = "secondary"

    def preprocess(self, env: Any, obs: MetaWorldObservation, instruction: str) -> Observation:
        if obs.image is None:
            raise ValueError("the Meta-World environment does not render: create it with render=True")
        images = {self.camera_role: obs.image}
        if obs.secondary_image is not None:
            images[self.secondary_role] = obs.secondary_image
        return Observation(images=images, state=obs.proprio, prompt=instruction)

    def postprocess(self, actions: np.ndarray) -> list[np.ndarray]:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise ValueError(f"expected an action chunk (H, {ACTION_DIM}), got shape {actions.shape}")
        return [np.clip(row, -1.0, 1.0) for row in actions]

    def get_video_frame(self, env: Any, obs: MetaWorldObservation) -> np.ndarray:
        if obs.image is None:
            raise ValueError("the Meta-World environment does not render: no video frame")
        return obs.image
