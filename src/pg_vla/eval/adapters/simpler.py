"""SimplerEnv adapters for the in-process evaluation agent: `pg_vla.eval.simpler.conventions` behind `EnvAdapter`.

The conversions themselves (pose from agent.base_pose and extra.tcp_pose, opening from agent.qpos, the
bridge and fractal state layouts, action conventions, the Google robot's gripper holds) live in the
numpy-only `pg_vla.eval.simpler.conventions`, which the simulator client (scripts/simpler_client.py)
uses in the simulator's own environment; these classes only wrap them into `pg_vla.policy.Observation`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pg_vla.eval.adapters.base import EnvAdapter
from pg_vla.eval.envs.simpler import simpler_task
from pg_vla.eval.simpler.conventions import (
    GRIPPER_THRESHOLD,
    STICKY_GRIPPER_STEPS,
    BridgeConventions,
    FractalConventions,
    SimplerConventions,
)
from pg_vla.policy import Observation


class SimplerAdapter(EnvAdapter):
    """One robot's conventions; the camera image goes to `camera_role` of the checkpoint."""

    robot: ClassVar[str]

    def __init__(self, conventions: SimplerConventions, camera_role: str = "primary"):
        self.conventions = conventions
        self.camera_role = camera_role

    @property
    def camera(self) -> str:
        return self.conventions.camera

    @property
    def dataset_name(self) -> str:
        return self.conventions.dataset_name

    @property
    def state_dim(self) -> int:
        return self.conventions.state_dim

    @property
    def action_dim(self) -> int:
        return self.conventions.action_dim

    def reset(self) -> None:
        self.conventions.reset()

    def image(self, obs: dict) -> np.ndarray:
        return self.conventions.image(obs)

    def state(self, obs: dict) -> np.ndarray:
        return self.conventions.state(obs)

    def preprocess(self, env: Any, obs: dict, instruction: str) -> Observation:
        return Observation(images={self.camera_role: self.image(obs)}, state=self.state(obs), prompt=instruction)

    def get_video_frame(self, env: Any, obs: dict) -> np.ndarray:
        return self.image(obs)

    def postprocess(self, actions: np.ndarray) -> list[np.ndarray]:
        return self.conventions.actions(actions)


class BridgeSimplerAdapter(SimplerAdapter):
    robot = "widowx"

    def __init__(self, camera_role: str = "primary", gripper_threshold: float = GRIPPER_THRESHOLD):
        super().__init__(BridgeConventions(gripper_threshold), camera_role)


class FractalSimplerAdapter(SimplerAdapter):
    robot = "google_robot"

    def __init__(self, camera_role: str = "primary", sticky_steps: int = STICKY_GRIPPER_STEPS):
        super().__init__(FractalConventions(sticky_steps), camera_role)


def adapter_for_robot(
    robot: str, *, camera_role: str = "primary", sticky_gripper_steps: int = STICKY_GRIPPER_STEPS
) -> SimplerAdapter:
    if robot == "widowx":
        return BridgeSimplerAdapter(camera_role=camera_role)
    if robot == "google_robot":
        return FractalSimplerAdapter(camera_role=camera_role, sticky_steps=sticky_gripper_steps)
    raise ValueError(f"unknown SimplerEnv robot {robot!r}; choose from ['google_robot', 'widowx']")


def adapter_for_task(task: str, **kwargs: Any) -> SimplerAdapter:
    """The adapter of a SimplerEnv task's robot (widowx_* -> bridge, google_robot_* -> fractal)."""
    return adapter_for_robot(simpler_task(task).robot, **kwargs)
