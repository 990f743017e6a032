"""Meta-World v3 tasks behind `EvalEnv`, with per-seed initial configurations.

    env = MetaWorldEnv("push-v3")                 # renders corner4 (rotated 180 degrees) at 224x224
    obs, instruction = env.reset(seed=100000)     # obs.image (224, 224, 3) uint8, obs.state (39,) float64
    MetaWorldEnv("reach-v3", secondary_camera="topview")  # obs.secondary_image too, from a second view
    result = env.step(np.array([0.1, 0.0, -0.2, 0.0]))

Seeding. Meta-World's `reset(seed=...)` ignores the seed, and `gym.make("Meta-World/MT1", seed=...)`
only draws among 50 configurations sampled in advance. Here the single-task benchmark's environment
gets its frozen random vector turned off and seeded sampling on, and is seeded before every reset, so
object and goal positions depend only on the seed, identically in every process.

Episodes. Success is momentary on several tasks (e.g. a pushed puck may slide past the goal), so an
episode ends at the first successful step; otherwise after `max_steps` (200) steps. Actions are
clipped to [-1, 1] (the environment's action space).

Observation. `state` is the environment's 39 values: hand xyz and gripper opening (0:4), object
poses (4:18), the previous step's 18 values (18:36) and the goal (36:39). Policies read only
`state[0:4]` (proprio) and the image; the scripted experts read all of it.

Second view. One camera leaves a point's depth along its ray unknown: reach's goal floats anywhere in a
20 x 10 x 25 cm box, and from corner4 alone even a perfect reading of its pixel places it within 5 cm
only about 80% of the time (`scripts/bench/metaworld_view_ambiguity.py`). `secondary_camera` (e.g.
topview) renders a second image of the same step, the dataset's "secondary" camera role.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pg_vla.eval.envs.base import EvalEnv, StepResult
from pg_vla.eval.metaworld.rendering import DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE, SceneCamera, use_egl_by_default
from pg_vla.eval.metaworld.tasks import get_task

DEFAULT_MAX_STEPS = 200
PROPRIO_SLICE = slice(0, 4)  # hand xyz + gripper opening
ACTION_DIM = 4  # hand xyz motion + gripper effort
# Meta-World's per-step measures, a step's info["measures"]: the distance (m) of the task's object (the hand
# on reach) to the goal, whether the hand is near the object, whether it holds it
TASK_MEASURES = ("obj_to_target", "near_object", "grasp_success")


@dataclass
class MetaWorldObservation:
    state: np.ndarray  # (39,) float64, the environment's observation
    image: np.ndarray | None  # (S, S, 3) uint8, None when the env does not render
    secondary_image: np.ndarray | None = None  # (S, S, 3) uint8 of the second view, None without one

    @property
    def proprio(self) -> np.ndarray:
        return self.state[PROPRIO_SLICE].astype(np.float32)


@functools.lru_cache(maxsize=None)
def _benchmark_task(task: str) -> Any:
    """The single-task benchmark's first task of `task` (sets the observation layout; its goal is not used)."""
    import metaworld

    return metaworld.MT1(task, seed=0).train_tasks[0]


def make_seeded_env(task: str) -> Any:
    """The raw Meta-World environment of `task`, set to draw a fresh configuration from its seed at each reset."""
    use_egl_by_default()
    get_task(task)  # validates the name
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task]()
    env.set_task(_benchmark_task(task))
    env._freeze_rand_vec = False  # noqa: SLF001 - Meta-World exposes no public switch for seeded resets
    env.seeded_rand_vec = True
    return env


class MetaWorldEnv(EvalEnv):
    """One Meta-World task; `render=False` skips the camera (e.g. to replay actions blindly)."""

    def __init__(
        self,
        task: str,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        image_size: int = DEFAULT_IMAGE_SIZE,
        camera: str = DEFAULT_CAMERA,
        secondary_camera: str | None = None,
        render: bool = True,
    ):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.task = task
        self.instruction = get_task(task).instruction
        self.max_steps = int(max_steps)
        self.env = make_seeded_env(task)
        if self.max_steps > self.env.max_path_length:
            raise ValueError(f"max_steps {max_steps} exceeds Meta-World's episode limit {self.env.max_path_length}")
        self.camera = SceneCamera(self.env.model, camera, image_size) if render else None
        self.secondary_camera = (
            SceneCamera(self.env.model, secondary_camera, image_size) if render and secondary_camera else None
        )
        self.steps = 0
        self.seed: int | None = None

    def _observe(self, state: np.ndarray) -> MetaWorldObservation:
        image = self.camera.render(self.env.data) if self.camera is not None else None
        second = self.secondary_camera.render(self.env.data) if self.secondary_camera is not None else None
        return MetaWorldObservation(
            state=np.asarray(state, dtype=np.float64).copy(), image=image, secondary_image=second
        )

    def reset(self, seed: int) -> tuple[MetaWorldObservation, str]:
        self.seed, self.steps = int(seed), 0
        self.env.seed(self.seed)
        state, _ = self.env.reset()
        # Meta-World leaves the goal markers and the derived body positions of the previous episode in
        # place until the first step: place them and recompute, so the first frame shows this episode.
        for site in self.env._target_site_config:  # noqa: SLF001
            self.env._set_pos_site(*site)  # noqa: SLF001
        import mujoco

        mujoco.mj_forward(self.env.model, self.env.data)
        return self._observe(state), self.instruction

    def step(self, action: np.ndarray) -> StepResult:
        if self.seed is None:
            raise RuntimeError("call reset(seed) before step()")
        if self.steps >= self.max_steps:
            raise RuntimeError(f"the episode ended after {self.max_steps} steps; call reset(seed)")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"a Meta-World action is 4 finite values (xyz motion, gripper), got {action!r}")
        state, reward, terminated, truncated, info = self.env.step(np.clip(action, -1.0, 1.0))
        self.steps += 1
        success = bool(info.get("success", 0.0))
        done = success or terminated or truncated or self.steps >= self.max_steps
        return StepResult(
            obs=self._observe(state),
            success=success,
            done=bool(done),
            info={
                "reward": float(reward),
                "steps": self.steps,
                "measures": {key: float(info[key]) for key in TASK_MEASURES if key in info},
            },
        )

    def close(self) -> None:
        for camera in (self.camera, self.secondary_camera):
            if camera is not None:
                camera.close()
        self.camera = self.secondary_camera = None
        self.env.close()


class ScriptedExpert:
    """Meta-World's scripted policy of a task: full observation -> action clipped to [-1, 1]."""

    def __init__(self, task: str):
        from metaworld import policies

        self.policy = getattr(policies, get_task(task).expert)()

    def __call__(self, obs: MetaWorldObservation) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips, and so do we
            warnings.simplefilter("ignore")
            action = self.policy.get_action(obs.state)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def record_expert_actions(task: str, seed: int, max_steps: int = DEFAULT_MAX_STEPS) -> list[np.ndarray]:
    """The scripted expert's clipped actions on `seed` until success (or `max_steps`), without rendering."""
    env = MetaWorldEnv(task, max_steps=max_steps, render=False)
    expert = ScriptedExpert(task)
    try:
        obs, _ = env.reset(seed)
        actions = []
        while True:
            action = expert(obs)
            actions.append(action)
            result = env.step(action)
            obs = result.obs
            if result.done:
                return actions
    finally:
        env.close()
