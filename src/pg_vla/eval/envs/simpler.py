"""SimplerEnv tasks (WidowX / bridge and Google robot / fractal) behind `EvalEnv`.

    env = SimplerEnv("widowx_carrot_on_plate")      # simpler_env.make(task), the prepackaged visual-matching setup
    obs, instruction = env.reset(seed=0)           # env.reset(seed=0, options=reset_options)
    result = env.step(action)                      # 7-D: xyz delta, axis-angle delta, gripper (see the adapters)
    result.success                                 # info["success"] at this step
    result.done                                    # success (end_on_success), the simulator's time limit, or max_steps
    env.instruction                                # the current instruction (multi-stage tasks may change it)

SimplerEnv is not on the package registry: it is installed from source with its ManiSkill2_real2sim
submodule (see `INSTALL_HINT`); `simpler_env` is imported only when an environment is built. Its SAPIEN
renderer needs a Vulkan GPU.

Episode lengths (`SIMPLER_TASKS[task].max_steps`) are the `--max-episode-steps` of SimplerEnv's own
visual-matching scripts (scripts/bridge.sh, pick_coke_can_*.sh, move_near_*.sh, drawer_*.sh,
put_in_drawer_*.sh): bridge 60 steps at 5 Hz (eggplant in the sink scene 120), pick coke can and
move near 80 steps at 3 Hz, open / close drawer 113, place into a closed drawer 200. The prepackaged
environments end (truncate) at their own registered limit too; `max_steps=` overrides ours.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pg_vla.eval.envs.base import EvalEnv, StepResult

INSTALL_HINT = (
    "SimplerEnv is not installed (the `simpler_env` module cannot be imported). It is not on the package "
    "registry; install it from source, with its ManiSkill2_real2sim submodule, into this environment:\n"
    "    git clone https://github.com/simpler-env/SimplerEnv --recurse-submodules\n"
    "    uv pip install -e SimplerEnv/ManiSkill2_real2sim\n"
    "    uv pip install -e SimplerEnv\n"
    "For the proprio observation obs['agent']['eef_pos'] use a SimplerEnv fork that reports it (e.g. "
    "github.com/allenzren/SimplerEnv with its submodule); without it the adapters compute the pose from "
    "obs['extra']['tcp_pose'] and obs['agent']['base_pose']. SimplerEnv renders with SAPIEN, which needs a "
    "Vulkan-capable GPU."
)


class SimplerEnvNotInstalledError(ImportError):
    """`simpler_env` is missing; the message says how to install it."""


def import_simpler_env() -> ModuleType:
    """Import `simpler_env`, or raise `SimplerEnvNotInstalledError` with the installation steps."""
    try:
        import simpler_env
    except ImportError as err:
        raise SimplerEnvNotInstalledError(f"{INSTALL_HINT}\n(import error: {err})") from err
    return simpler_env


@dataclass(frozen=True)
class SimplerTask:
    name: str  # simpler_env task name
    robot: str  # "widowx" (bridge conventions) or "google_robot" (fractal conventions)
    max_steps: int  # control steps per episode
    control_hz: int  # control frequency of the prepackaged environment (video fps)


def _tasks(robot: str, max_steps: int, control_hz: int, *names: str) -> dict[str, SimplerTask]:
    return {name: SimplerTask(name, robot, max_steps, control_hz) for name in names}


SIMPLER_TASKS: dict[str, SimplerTask] = {
    **_tasks("widowx", 60, 5, "widowx_carrot_on_plate", "widowx_spoon_on_towel", "widowx_stack_cube"),
    **_tasks("widowx", 120, 5, "widowx_put_eggplant_in_basket"),
    **_tasks("google_robot", 80, 3, "google_robot_pick_coke_can", "google_robot_pick_horizontal_coke_can",
             "google_robot_pick_vertical_coke_can", "google_robot_pick_standing_coke_can",
             "google_robot_move_near", "google_robot_move_near_v1"),
    **_tasks("google_robot", 113, 3, "google_robot_open_drawer", "google_robot_open_top_drawer",
             "google_robot_open_middle_drawer", "google_robot_open_bottom_drawer", "google_robot_close_drawer",
             "google_robot_close_top_drawer", "google_robot_close_middle_drawer", "google_robot_close_bottom_drawer"),
    **_tasks("google_robot", 200, 3, "google_robot_place_in_closed_drawer", "google_robot_place_in_closed_top_drawer",
             "google_robot_place_in_closed_middle_drawer", "google_robot_place_in_closed_bottom_drawer",
             "google_robot_place_apple_in_closed_top_drawer"),
}


def simpler_task(name: str) -> SimplerTask:
    if name not in SIMPLER_TASKS:
        raise ValueError(f"unknown SimplerEnv task {name!r}; known tasks: {', '.join(sorted(SIMPLER_TASKS))}")
    return SIMPLER_TASKS[name]


class SimplerEnv(EvalEnv):
    """One SimplerEnv task.

    end_on_success: False runs every episode to its time limit, as SimplerEnv's own evaluation scripts
        do (they judge success at the last step); the agent then reads the last step's `success`.
    reset_options: passed to the simulator's reset (e.g. {"obj_init_options": {...}}).
    object_episodes: N > 0 makes reset(seed) ask for the object configuration seed % N
        (options["obj_init_options"]["episode_id"]), so seeds 0..N-1 visit each of a task's N
        prepackaged configurations once (SimplerEnv's bridge scripts use episodes 0..23); the seed still
        drives every other random choice.
    """

    def __init__(self, task: str, *, max_steps: int | None = None, end_on_success: bool = True,
                 reset_options: dict[str, Any] | None = None, object_episodes: int | None = None):
        self.spec = simpler_task(task)
        self.task = task
        self.max_steps = int(max_steps) if max_steps is not None else self.spec.max_steps
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        self.end_on_success = bool(end_on_success)
        self.reset_options = copy.deepcopy(dict(reset_options)) if reset_options else None
        if object_episodes is not None and int(object_episodes) <= 0:
            raise ValueError(f"object_episodes must be positive, got {object_episodes}")
        self.object_episodes = int(object_episodes) if object_episodes is not None else None
        self.env = import_simpler_env().make(task)  # gymnasium env (TimeLimit-wrapped)
        self.sim = getattr(self.env, "unwrapped", self.env)  # the ManiSkill2 env: instruction, agent
        self.instruction = ""
        self.steps = 0

    @property
    def robot(self) -> str:
        return self.spec.robot

    @property
    def fps(self) -> int:
        return self.spec.control_hz

    def _read_instruction(self) -> str:
        return str(self.sim.get_language_instruction())

    def reset(self, seed: int) -> tuple[Any, str]:
        options = copy.deepcopy(self.reset_options)  # the simulator may write into its options
        if self.object_episodes is not None:
            options = options or {}
            options.setdefault("obj_init_options", {})["episode_id"] = int(seed) % self.object_episodes
        obs, _ = self.env.reset(seed=int(seed), options=options)
        self.steps = 0
        self.instruction = self._read_instruction()
        return obs, self.instruction

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"a SimplerEnv action is 7-D (xyz, axis-angle, gripper), got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or infinite values: {action}")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        success = bool(info.get("success", terminated))
        self.instruction = self._read_instruction()
        time_up = bool(truncated) or self.steps >= self.max_steps
        done = time_up or (success and self.end_on_success)
        info = {**dict(info), "reward": float(reward), "truncated": time_up, "steps": self.steps,
                "instruction": self.instruction}
        return StepResult(obs=obs, success=success, done=done, info=info)

    def close(self) -> None:
        self.env.close()


class SimplerSuite:
    """SimplerEnv for the evaluation agent (the `pg_vla.eval.suite.EnvSuite` interface), one robot per suite:
    the eval configs' `env` options (robot, max_steps, end_on_success, reset_options, object_episodes,
    sticky_gripper_steps, camera_role) are its keyword arguments. SimplerEnv has no scripted experts."""

    name = "simpler"
    action_dim = 7

    def __init__(self, robot: str = "widowx", *, max_steps: int | None = None, end_on_success: bool = True,
                 reset_options: dict[str, Any] | None = None, object_episodes: int | None = None,
                 sticky_gripper_steps: int = 15, camera_role: str = "primary"):
        robots = sorted({task.robot for task in SIMPLER_TASKS.values()})
        if robot not in robots:
            raise ValueError(f"unknown SimplerEnv robot {robot!r}; choose from {robots}")
        self.robot = robot
        self.tasks = [name for name, task in SIMPLER_TASKS.items() if task.robot == robot]
        self.env_options = {"max_steps": max_steps, "end_on_success": end_on_success,
                            "reset_options": dict(reset_options) if reset_options else None,
                            "object_episodes": object_episodes}
        self.sticky_gripper_steps = int(sticky_gripper_steps)
        self.camera_role = camera_role

    def make_env(self, task: str, *, render: bool = True) -> SimplerEnv:
        if simpler_task(task).robot != self.robot:
            raise ValueError(f"task {task!r} is a {simpler_task(task).robot} task; this suite runs {self.robot}")
        return SimplerEnv(task, **self.env_options)

    def make_adapter(self):
        from pg_vla.eval.adapters.simpler import BridgeSimplerAdapter, FractalSimplerAdapter

        if self.robot == "widowx":
            return BridgeSimplerAdapter(camera_role=self.camera_role)
        return FractalSimplerAdapter(camera_role=self.camera_role, sticky_steps=self.sticky_gripper_steps)

    def make_expert(self, task: str):
        raise NotImplementedError("SimplerEnv has no scripted expert; use policy=checkpoint, zero or random")

    def record_expert_actions(self, task: str, seed: int) -> list[np.ndarray]:
        raise NotImplementedError("SimplerEnv has no scripted expert to replay")
