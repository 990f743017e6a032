"""SimplerEnv tasks (WidowX / bridge and Google robot / fractal) behind `EvalEnv`.

    env = SimplerEnv("widowx_carrot_on_plate")      # simpler_env.make(task), the prepackaged visual-matching setup
    obs, instruction = env.reset(seed=0)           # env.reset(seed=0, options={"obj_init_options": {"episode_id": 0}})
    result = env.step(action)                      # 7-D: xyz delta, axis-angle delta, gripper (see the adapters)
    result.success                                 # info["success"] at this step
    result.done                                    # success (end_on_success), the simulator's time limit, or max_steps
    env.instruction                                # the current instruction (multi-stage tasks may change it)

SimplerEnv is not on the package registry and pins numpy<2 and gymnasium<1, so it runs in its own
environment (scripts/setup_simpler.sh) as a client of the policy server (scripts/simpler_client.py);
`simpler_env` is imported only when an environment is built. Nothing here imports torch.

`SIMPLER_TASKS` has every name of `simpler_env.ENVIRONMENTS`. Episode lengths (`max_steps`) are the
`--max-episode-steps` of SimplerEnv's own visual-matching scripts (scripts/bridge.sh,
pick_coke_can_*.sh, move_near_*.sh, drawer_*.sh, put_in_drawer_*.sh): bridge 60 steps at 5 Hz
(eggplant in the sink scene 120), pick coke can / pick object and move near 80 steps at 3 Hz, open /
close drawer 113, place into a closed drawer 200. The prepackaged environments end (truncate) at their
own registered limit too; `max_steps=` overrides ours.

Prepackaged object layouts (`episode_configs`): only the put_on_* (bridge) and move_near environments
read `obj_init_options["episode_id"]`: 24 layouts on each bridge task (4 positions x 6 orientations,
episode_id taken modulo 24), 60 on move near (5 object triplets x 3 sources x 4 positions, no modulo).
Episode i of a task starts from seed s and episode_id = s % episode_configs, so seeds 0, 1, ... visit
the layouts in order as open-pi-zero's evaluation does (its episode_id is the episode counter). The
other tasks (pick coke can / object, drawers) draw their layout from the seed alone.

The drawer environments leave `obs["extra"]` empty; reset and step add `extra.tcp_pose` from the simulator's
tcp link, where the other tasks' observation reads it, so every task gives the adapters the same keys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pg_vla.eval.envs.base import EvalEnv, StepResult

INSTALL_HINT = (
    "SimplerEnv is not installed in this Python (the `simpler_env` module cannot be imported). It runs in "
    "its own environment (numpy<2, gymnasium<1):\n"
    "    git clone https://github.com/simpler-env/SimplerEnv --recurse-submodules\n"
    "    scripts/setup_simpler.sh SimplerEnv SimplerEnv/ManiSkill2_real2sim [venv path]\n"
    "then run scripts/simpler_client.py with that venv's python against scripts/serve_policy.py (see README)."
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
    episode_configs: int | None = None  # prepackaged layouts selected by obj_init_options["episode_id"]


def _tasks(
    robot: str, max_steps: int, control_hz: int, *names: str, episode_configs: int | None = None
) -> dict[str, SimplerTask]:
    return {name: SimplerTask(name, robot, max_steps, control_hz, episode_configs) for name in names}


SIMPLER_TASKS: dict[str, SimplerTask] = {
    **_tasks(
        "widowx", 60, 5, "widowx_carrot_on_plate", "widowx_spoon_on_towel", "widowx_stack_cube", episode_configs=24
    ),
    **_tasks("widowx", 120, 5, "widowx_put_eggplant_in_basket", episode_configs=24),
    **_tasks(
        "google_robot",
        80,
        3,
        "google_robot_pick_coke_can",
        "google_robot_pick_horizontal_coke_can",
        "google_robot_pick_vertical_coke_can",
        "google_robot_pick_standing_coke_can",
        "google_robot_pick_object",
    ),
    **_tasks(
        "google_robot",
        80,
        3,
        "google_robot_move_near",
        "google_robot_move_near_v0",
        "google_robot_move_near_v1",
        episode_configs=60,
    ),
    **_tasks(
        "google_robot",
        113,
        3,
        "google_robot_open_drawer",
        "google_robot_open_top_drawer",
        "google_robot_open_middle_drawer",
        "google_robot_open_bottom_drawer",
        "google_robot_close_drawer",
        "google_robot_close_top_drawer",
        "google_robot_close_middle_drawer",
        "google_robot_close_bottom_drawer",
    ),
    **_tasks(
        "google_robot",
        200,
        3,
        "google_robot_place_in_closed_drawer",
        "google_robot_place_in_closed_top_drawer",
        "google_robot_place_in_closed_middle_drawer",
        "google_robot_place_in_closed_bottom_drawer",
        "google_robot_place_apple_in_closed_top_drawer",
    ),
}


def simpler_task(name: str) -> SimplerTask:
    if name not in SIMPLER_TASKS:
        raise ValueError(f"unknown SimplerEnv task {name!r}; known tasks: {', '.join(sorted(SIMPLER_TASKS))}")
    return SIMPLER_TASKS[name]


def with_tcp_pose(obs: dict, sim: Any) -> dict:
    """obs with obs["extra"]["tcp_pose"] read from the simulator where its observation leaves it out.

    The drawer tasks' envs (ManiSkill2_real2sim's OpenDrawerInSceneEnv and its close / place-in-drawer
    subclasses) do not override _get_obs_extra, so their obs["extra"] is empty; they still have the tcp
    link that the other tasks' tcp_pose comes from (CustomSceneEnv.tcp). -> obs itself when it has a
    tcp_pose (or the simulator has no tcp; the conventions then name the missing key), else a copy with it.
    """
    extra = obs.get("extra") if isinstance(obs, dict) else None
    tcp = getattr(sim, "tcp", None)
    if (isinstance(extra, dict) and "tcp_pose" in extra) or tcp is None:
        return obs
    pose = tcp.pose  # sapien.Pose in the world: p xyz, q wxyz (what vectorize_pose stacks)
    tcp_pose = np.concatenate([np.asarray(pose.p, np.float32), np.asarray(pose.q, np.float32)])
    return {**obs, "extra": {**(extra or {}), "tcp_pose": tcp_pose}}


class SimplerEnv(EvalEnv):
    """One SimplerEnv task.

    end_on_success: False (the visual-matching protocol of SimplerEnv's scripts and open-pi-zero) runs
        every episode to its time limit and judges success at the last step; True ends at the first success.
    reset_options: passed to the simulator's reset (e.g. {"obj_init_options": {...}}); the layout's
        episode_id is added for the tasks that read it (see the module docstring).
    """

    def __init__(
        self,
        task: str,
        *,
        max_steps: int | None = None,
        end_on_success: bool = False,
        reset_options: dict[str, Any] | None = None,
    ):
        self.spec = simpler_task(task)
        self.task = task
        self.max_steps = int(max_steps) if max_steps is not None else self.spec.max_steps
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        self.end_on_success = bool(end_on_success)
        self.reset_options = copy.deepcopy(dict(reset_options)) if reset_options else None
        self.env = import_simpler_env().make(task)  # gymnasium env (TimeLimit-wrapped)
        self.sim = getattr(self.env, "unwrapped", self.env)  # the ManiSkill2 env: instruction, agent
        self.instruction = ""
        self.steps = 0
        self.reset_info: dict[str, Any] = {}

    @property
    def robot(self) -> str:
        return self.spec.robot

    @property
    def fps(self) -> int:
        return self.spec.control_hz

    def _read_instruction(self) -> str:
        return str(self.sim.get_language_instruction())

    def reset_options_for(self, seed: int) -> dict[str, Any] | None:
        """The options reset(seed) passes: reset_options, plus the layout's episode_id where the task reads it."""
        options = copy.deepcopy(self.reset_options)  # the simulator may write into its options
        if self.spec.episode_configs is not None:
            options = options or {}
            options.setdefault("obj_init_options", {})["episode_id"] = int(seed) % self.spec.episode_configs
        return options

    def reset(self, seed: int) -> tuple[Any, str]:
        obs, info = self.env.reset(seed=int(seed), options=self.reset_options_for(seed))
        obs = with_tcp_pose(obs, self.sim)
        self.reset_info = dict(info)
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
        obs = with_tcp_pose(obs, self.sim)
        self.steps += 1
        success = bool(info.get("success", terminated))
        self.instruction = self._read_instruction()
        time_up = bool(truncated) or self.steps >= self.max_steps
        done = time_up or (success and self.end_on_success)
        info = {
            **dict(info),
            "reward": float(reward),
            "truncated": time_up,
            "steps": self.steps,
            "instruction": self.instruction,
        }
        return StepResult(obs=obs, success=success, done=done, info=info)

    def close(self) -> None:
        self.env.close()


class SimplerSuite:
    """SimplerEnv for the evaluation agent (the `pg_vla.eval.suite.EnvSuite` interface), one robot per suite:
    the eval configs' `env` options (robot, max_steps, end_on_success, reset_options, sticky_gripper_steps,
    camera_role) are its keyword arguments. SimplerEnv has no scripted experts."""

    name = "simpler"
    action_dim = 7

    def __init__(
        self,
        robot: str = "widowx",
        *,
        max_steps: int | None = None,
        end_on_success: bool = False,
        reset_options: dict[str, Any] | None = None,
        sticky_gripper_steps: int = 15,
        camera_role: str = "primary",
    ):
        robots = sorted({task.robot for task in SIMPLER_TASKS.values()})
        if robot not in robots:
            raise ValueError(f"unknown SimplerEnv robot {robot!r}; choose from {robots}")
        self.robot = robot
        self.tasks = [name for name, task in SIMPLER_TASKS.items() if task.robot == robot]
        self.env_options = {
            "max_steps": max_steps,
            "end_on_success": end_on_success,
            "reset_options": dict(reset_options) if reset_options else None,
        }
        self.sticky_gripper_steps = int(sticky_gripper_steps)
        self.camera_role = camera_role

    def check_task(self, task: str) -> None:
        if simpler_task(task).robot != self.robot:
            raise ValueError(f"task {task!r} is a {simpler_task(task).robot} task; this suite runs {self.robot}")

    def make_env(self, task: str, *, render: bool = True) -> SimplerEnv:
        self.check_task(task)
        return SimplerEnv(task, **self.env_options)

    def make_adapter(self):
        from pg_vla.eval.adapters.simpler import adapter_for_robot

        return adapter_for_robot(
            self.robot, camera_role=self.camera_role, sticky_gripper_steps=self.sticky_gripper_steps
        )

    def make_expert(self, task: str):
        raise NotImplementedError("SimplerEnv has no scripted expert; use policy=checkpoint, zero or random")

    def record_expert_actions(self, task: str, seed: int) -> list[np.ndarray]:
        raise NotImplementedError("SimplerEnv has no scripted expert to replay")
