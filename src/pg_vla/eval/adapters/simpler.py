"""SimplerEnv adapters: the simulator's observations and controllers <-> bridge / fractal training conventions.

Both robots report the end effector in the robot base frame as obs["agent"]["eef_pos"] = (8,)
xyz, quaternion wxyz, gripper opening (0 closed .. 1 open) (SimplerEnv forks with proprio, e.g. the one
open-pi-zero evaluates with). Without that key the pose is computed from obs["extra"]["tcp_pose"] and
obs["agent"]["base_pose"] (world frame, xyz + wxyz) and the opening from the simulator's
`agent.get_gripper_closedness()`.

WidowX / bridge (`BridgeSimplerAdapter`, statistics `bridge_dataset`, 5 Hz):
    state (7)   xyz, roll/pitch/yaw of R_eef @ D^T, gripper opening
                D = WIDOWX_TOP_DOWN_ROTATION = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]] (a +90 degree turn about y):
                bridge's poses are relative to the WidowX top-down pose (the default rotation of the
                bridge_data_robot WidowX controller), so the top-down gripper reads roll = pitch = yaw = 0.
    action (7)  xyz delta, axis-angle of the rpy delta, gripper +1 open / -1 close (opening > 0.5 is open);
                the controller takes the gripper as an absolute target.
Google robot / fractal (`FractalSimplerAdapter`, statistics `fractal20220817_data`, 3 Hz):
    state (8)   xyz, quaternion xyzw (reordered from wxyz), gripper closedness = 1 - opening
    action (7)  xyz delta, axis-angle of the rpy delta, gripper +1 close / -1 open through `StickyGripper`;
                the controller takes the gripper as a relative (delta) joint target.

Roll/pitch/yaw are static-axes x-y-z Euler angles (see `pg_vla.eval.rotations`). The policy's chunk is
already de-normalized (pg_vla.policy.Policy), so the adapters only change conventions, never units.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pg_vla.eval.adapters.base import EnvAdapter
from pg_vla.eval.envs.simpler import simpler_task
from pg_vla.eval.rotations import matrix_to_rpy, pose_in_frame, quat_wxyz_to_matrix, rpy_to_axis_angle, wxyz_to_xyzw
from pg_vla.policy import Observation

WIDOWX_TOP_DOWN_ROTATION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
GRIPPER_THRESHOLD = 0.5  # predicted opening above it means open (training targets are 0 closed / 1 open)
STICKY_GRIPPER_STEPS = 15  # as in SimplerEnv's Octo Google-robot setup (about 5 s at 3 Hz)
CLOSE, OPEN = 1.0, -1.0  # Google robot relative gripper commands


def eef_pose_and_opening(env: Any, obs: dict) -> tuple[np.ndarray, float]:
    """-> end-effector pose in the robot base frame (7,) xyz + wxyz, gripper opening (0 closed .. 1 open)."""
    agent_obs = obs.get("agent", {})
    if "eef_pos" in agent_obs:
        eef = np.asarray(agent_obs["eef_pos"], dtype=np.float64)
        if eef.shape != (8,):
            raise ValueError(f"obs['agent']['eef_pos'] must be (8,) xyz, wxyz, gripper opening; got {eef.shape}")
        return eef[:7], float(eef[7])
    if "tcp_pose" not in obs.get("extra", {}) or "base_pose" not in agent_obs:
        raise KeyError("the SimplerEnv observation has neither obs['agent']['eef_pos'] nor obs['extra']['tcp_pose'] "
                       "with obs['agent']['base_pose']; build the env with obs_mode='rgbd' (simpler_env.make does)")
    pose = pose_in_frame(agent_obs["base_pose"], obs["extra"]["tcp_pose"])
    agent = getattr(getattr(env, "unwrapped", env), "agent", None)
    if agent is None or not hasattr(agent, "get_gripper_closedness"):
        raise ValueError("cannot read the gripper opening: obs['agent'] has no 'eef_pos' and the simulator's agent "
                         "has no get_gripper_closedness(); use a SimplerEnv version that reports eef_pos")
    return pose, 1.0 - float(agent.get_gripper_closedness())


class StickyGripper:
    """Google robot gripper: absolute opening predictions -> relative commands (+1 close, -1 open), sticky.

    At each step the prediction becomes a command: close (+1) when the opening is <= `threshold`, open (-1)
    otherwise. When the command differs from the one issued at the previous step (the episode starts
    from open), it is issued for `repeat` consecutive steps (this step included) whatever the
    predictions say meanwhile; after that the command follows the predictions again, and the next
    change starts a new hold. Example with repeat 3 and predictions (o open, c closed) o o c o o o c c c:
    commands -1 -1 +1 +1 +1 -1 -1 -1 +1: the close at step 2 holds steps 2-4 (the open predicted at 3
    and 4 waits), the open at step 5 holds steps 5-7, and the close predicted at 6-7 is issued at 8.
    """

    def __init__(self, repeat: int = STICKY_GRIPPER_STEPS, threshold: float = GRIPPER_THRESHOLD):
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.last = OPEN  # the gripper starts open
        self.remaining = 0  # steps left in the current hold, this one excluded

    def __call__(self, opening: float) -> float:
        if self.remaining > 0:
            self.remaining -= 1
            return self.last
        command = OPEN if opening > self.threshold else CLOSE
        if command != self.last:
            self.remaining = self.repeat - 1
        self.last = command
        return command


class SimplerAdapter(EnvAdapter):
    """What both robots share: camera image, action layout (xyz, rpy -> axis-angle, gripper)."""

    robot: ClassVar[str]
    camera: ClassVar[str]  # the camera SimplerEnv evaluates with (its get_image_from_maniskill2_obs_dict)
    dataset_name: ClassVar[str]  # statistics the checkpoint must de-normalize with
    state_dim: ClassVar[int]
    action_dim: ClassVar[int] = 7

    def __init__(self, camera_role: str = "primary", gripper_threshold: float = GRIPPER_THRESHOLD):
        self.camera_role = camera_role
        self.gripper_threshold = float(gripper_threshold)

    # ---- observations ------------------------------------------------------------------------------
    def image(self, obs: dict) -> np.ndarray:
        """uint8 (H, W, 3) RGB of the evaluation camera."""
        try:
            image = obs["image"][self.camera]["rgb"]
        except KeyError as err:
            cameras = sorted(obs.get("image", {}))
            raise KeyError(f"observation has no obs['image'][{self.camera!r}]['rgb'] (cameras: {cameras})") from err
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"camera {self.camera!r} image must be (H, W, 3), got {image.shape}")
        if image.dtype != np.uint8:  # renderers may return floats in [0, 1] or [0, 255]
            scale = 255.0 if image.max() <= 1.0 else 1.0
            image = np.clip(np.round(image * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image)

    def state(self, env: Any, obs: dict) -> np.ndarray:
        """Proprio in the training dataset's units and order, float32 (state_dim,)."""
        pose, opening = eef_pose_and_opening(env, obs)
        return self.state_from_pose(pose, opening)

    def state_from_pose(self, pose: np.ndarray, opening: float) -> np.ndarray:
        raise NotImplementedError

    def preprocess(self, env: Any, obs: dict, instruction: str) -> Observation:
        return Observation(images={self.camera_role: self.image(obs)}, state=self.state(env, obs), prompt=instruction)

    def get_video_frame(self, env: Any, obs: dict) -> np.ndarray:
        return self.image(obs)

    # ---- actions -----------------------------------------------------------------------------------
    def gripper_command(self, opening: float) -> float:
        raise NotImplementedError

    def postprocess(self, actions: np.ndarray) -> list[np.ndarray]:
        """(H, 7) xyz delta, rpy delta, gripper opening 0..1 -> H actions (7,) xyz, axis-angle, gripper command."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"expected an action chunk (H, {self.action_dim}), got shape {actions.shape}")
        rotation = rpy_to_axis_angle(actions[:, 3:6])  # (H, 3)
        return [np.concatenate([action[:3], rotvec, [self.gripper_command(action[6])]])
                for action, rotvec in zip(actions, rotation)]


class BridgeSimplerAdapter(SimplerAdapter):
    """WidowX in SimplerEnv <-> BridgeData V2 (see the module docstring)."""

    robot = "widowx"
    camera = "3rd_view_camera"
    dataset_name = "bridge_dataset"
    state_dim = 7

    def state_from_pose(self, pose: np.ndarray, opening: float) -> np.ndarray:
        rotation = quat_wxyz_to_matrix(pose[3:7]) @ WIDOWX_TOP_DOWN_ROTATION.T
        return np.concatenate([pose[:3], matrix_to_rpy(rotation), [opening]]).astype(np.float32)

    def gripper_command(self, opening: float) -> float:
        return 1.0 if opening > self.gripper_threshold else -1.0


class FractalSimplerAdapter(SimplerAdapter):
    """Google robot in SimplerEnv <-> fractal / RT-1 (see the module docstring)."""

    robot = "google_robot"
    camera = "overhead_camera"
    dataset_name = "fractal20220817_data"
    state_dim = 8

    def __init__(self, camera_role: str = "primary", gripper_threshold: float = GRIPPER_THRESHOLD,
                 sticky_steps: int = STICKY_GRIPPER_STEPS):
        super().__init__(camera_role, gripper_threshold)
        self.sticky = StickyGripper(sticky_steps, gripper_threshold)

    def reset(self) -> None:
        self.sticky.reset()

    def state_from_pose(self, pose: np.ndarray, opening: float) -> np.ndarray:
        return np.concatenate([pose[:3], wxyz_to_xyzw(pose[3:7]), [1.0 - opening]]).astype(np.float32)

    def gripper_command(self, opening: float) -> float:
        return self.sticky(opening)


ADAPTERS: dict[str, type[SimplerAdapter]] = {"widowx": BridgeSimplerAdapter, "google_robot": FractalSimplerAdapter}


def adapter_for_task(task: str, **kwargs: Any) -> SimplerAdapter:
    """The adapter of a SimplerEnv task's robot (widowx_* -> bridge, google_robot_* -> fractal)."""
    return ADAPTERS[simpler_task(task).robot](**kwargs)


def build_simpler(task: str, *, max_steps: int | None = None, end_on_success: bool = True,
                  reset_options: dict[str, Any] | None = None, object_episodes: int | None = None,
                  sticky_gripper_steps: int = STICKY_GRIPPER_STEPS, camera_role: str = "primary"):
    """-> (SimplerEnv, its adapter) for one task; the keyword arguments are the eval configs' `env` keys."""
    from pg_vla.eval.envs.simpler import SimplerEnv

    kwargs: dict[str, Any] = {"camera_role": camera_role}
    if simpler_task(task).robot == "google_robot":
        kwargs["sticky_steps"] = sticky_gripper_steps
    adapter = adapter_for_task(task, **kwargs)
    env = SimplerEnv(task, max_steps=max_steps, end_on_success=end_on_success, reset_options=reset_options,
                     object_episodes=object_episodes)
    return env, adapter
