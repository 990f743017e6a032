"""SimplerEnv observations and actions <-> bridge / fractal training conventions, in numpy only.

The upstream simulator's observation (obs_mode="rgbd", what `simpler_env.make` builds):

    obs["agent"]["qpos"]         (J,)  joint positions, the robot's active joints in order (`RobotSpec`)
    obs["agent"]["base_pose"]    (7,)  robot base in the world, xyz + quaternion wxyz
    obs["extra"]["tcp_pose"]     (7,)  tool centre point in the world, xyz + wxyz
    obs["image"][cam]["rgb"]     uint8 (H, W, 3); the evaluation camera is "3rd_view_camera" (480 x 640)
                                 on the WidowX and "overhead_camera" (512 x 640) on the Google robot
    obs["camera_param"][cam]     extrinsic_cv, cam2world_gl, intrinsic_cv

End-effector pose in the base frame = inv(base_pose) * tcp_pose. Gripper opening (0 closed .. 1 open) =
1 - the simulator agent's closedness, computed from the two finger joints of qpos and their limits:
    WidowX        qpos[6:8] (left_finger, right_finger), limits [0.015, 0.037] m (0.037 = open):
                  opening = min(mean((q - 0.015) / 0.022), 1)
    Google robot  qpos[7:9] (joint_finger_right, joint_finger_left), 0 open .. 1.3 rad closed:
                  opening = min(1 - mean(q / 1.3), 1)

WidowX / bridge (`BridgeConventions`, statistics `bridge_dataset`, 5 Hz):
    state (7)   xyz, roll/pitch/yaw of R_eef @ D^T, gripper opening
                D = WIDOWX_TOP_DOWN_ROTATION = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]] (+90 degrees about y):
                bridge's poses are relative to the WidowX top-down pose (the default rotation of the
                bridge_data_robot WidowX controller), so the top-down gripper reads roll = pitch = yaw = 0.
    action (7)  xyz delta, axis-angle of the rpy delta, gripper +1 open / -1 close (opening > 0.5 is
                open); the controller takes the gripper as an absolute target.
Google robot / fractal (`FractalConventions`, statistics `fractal20220817_data`, 3 Hz):
    state (8)   xyz, quaternion xyzw (reordered from wxyz), gripper closedness = 1 - opening
    action (7)  xyz delta, axis-angle of the rpy delta, gripper through `RelativeGripper` (+1 close,
                -1 open, a relative joint target).

Roll/pitch/yaw are static-axes x-y-z Euler angles (see `pg_vla.eval.rotations`). The policy's chunk is
already de-normalized (by the policy or the policy server), so these only change conventions, never units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pg_vla.eval.rotations import matrix_to_rpy, pose_in_frame, quat_wxyz_to_matrix, rpy_to_axis_angle, wxyz_to_xyzw

WIDOWX_TOP_DOWN_ROTATION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
GRIPPER_THRESHOLD = 0.5  # predicted opening above it means open (training targets are 0 closed / 1 open)
STICKY_GRIPPER_STEPS = 15  # Octo's and open-pi-zero's Google-robot setting (about 5 s at 3 Hz)
STICKY_TRIGGER = 0.5  # |relative command| above it starts a hold


@dataclass(frozen=True)
class RobotSpec:
    """Where a robot's fingers are in obs["agent"]["qpos"] and the finger positions fully closed / open."""

    name: str
    camera: str  # the camera SimplerEnv's visual-matching evaluation uses
    qpos_dim: int
    finger_indices: tuple[int, int]
    closed: float  # finger joint position when closed
    opened: float  # ... and when open

    def opening(self, qpos: Any) -> float:
        """Gripper opening 0 (closed) .. 1 (open) from the joint positions, as 1 - the agent's closedness."""
        qpos = np.asarray(qpos, dtype=np.float64)
        if qpos.shape != (self.qpos_dim,):
            raise ValueError(
                f"{self.name}: obs['agent']['qpos'] must have {self.qpos_dim} joint positions, got shape {qpos.shape}"
            )
        fingers = qpos[list(self.finger_indices)]
        openness = float(np.mean((fingers - self.closed) / (self.opened - self.closed)))
        return min(openness, 1.0)  # the agent clips closedness at 0


# Joint order and limits as the ManiSkill2_real2sim agents report them (robot.get_active_joints(),
# get_qlimits()) and their get_gripper_closedness() reads them.
WIDOWX = RobotSpec("widowx", "3rd_view_camera", qpos_dim=8, finger_indices=(6, 7), closed=0.015, opened=0.037)
GOOGLE_ROBOT = RobotSpec("google_robot", "overhead_camera", qpos_dim=11, finger_indices=(7, 8), closed=1.3, opened=0.0)
ROBOTS = {spec.name: spec for spec in (WIDOWX, GOOGLE_ROBOT)}


def _field(obs: dict, group: str, key: str, size: int | None = None) -> np.ndarray:
    try:
        value = np.asarray(obs[group][key], dtype=np.float64)
    except (KeyError, TypeError) as err:
        raise KeyError(
            f"the SimplerEnv observation has no obs[{group!r}][{key!r}] (groups: "
            f"{sorted(obs) if isinstance(obs, dict) else type(obs).__name__}); build the env with "
            "obs_mode='rgbd' (simpler_env.make does)"
        ) from err
    if size is not None and value.shape != (size,):
        raise ValueError(f"obs[{group!r}][{key!r}] must have shape ({size},), got {value.shape}")
    return value


def eef_pose_in_base(obs: dict) -> np.ndarray:
    """-> (7,) end-effector (tcp) pose in the robot base frame, xyz + wxyz (w >= 0)."""
    return pose_in_frame(_field(obs, "agent", "base_pose", 7), _field(obs, "extra", "tcp_pose", 7))


def camera_image(obs: dict, camera: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of one camera."""
    try:
        image = obs["image"][camera]["rgb"]
    except (KeyError, TypeError) as err:
        cameras = sorted(obs.get("image", {})) if isinstance(obs, dict) else []
        raise KeyError(f"observation has no obs['image'][{camera!r}]['rgb'] (cameras: {cameras})") from err
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"camera {camera!r} image must be (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:  # renderers may return floats in [0, 1] or [0, 255]
        scale = 255.0 if image.max() <= 1.0 else 1.0
        image = np.clip(np.round(image * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


class RelativeGripper:
    """Google robot gripper: predicted openings (0 closed .. 1 open) -> relative commands, with holds.

    The rule open-pi-zero evaluates its fractal policies with (after Octo's): the command is
    c = 1 - 2 * opening (+1 close, -1 open, near 0 keeps the fingers). When |c| > 0.5 and no hold is
    running, c is held for `repeat` steps (this one included) whatever the predictions say meanwhile;
    then the next step follows its own prediction again. Outside holds c is sent as is.
    Example with repeat 3 and openings 0.4 1.0 0.9 0.8 0.0: commands 0.2 -1 -1 -1 +1 (the open at step 1
    holds steps 1-3, the close predicted at step 4 starts a new hold).
    """

    def __init__(self, repeat: int = STICKY_GRIPPER_STEPS):
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)
        self.reset()

    def reset(self) -> None:
        self.held = 0.0
        self.remaining = 0  # steps of the current hold still to send, this one included

    def __call__(self, opening: float) -> float:
        command = 1.0 - 2.0 * float(opening)
        if self.remaining == 0 and abs(command) > STICKY_TRIGGER:
            self.held, self.remaining = command, self.repeat
        if self.remaining > 0:
            self.remaining -= 1
            return self.held
        return command


class SimplerConventions:
    """What both robots share: camera image, pose and opening, action layout (xyz, rpy -> axis-angle, gripper)."""

    robot: ClassVar[RobotSpec]
    dataset_name: ClassVar[str]  # statistics the checkpoint must de-normalize with
    state_dim: ClassVar[int]
    action_dim: ClassVar[int] = 7

    @property
    def camera(self) -> str:
        return self.robot.camera

    def reset(self) -> None:
        """Forget per-episode state (the Google robot's gripper hold)."""

    def image(self, obs: dict) -> np.ndarray:
        return camera_image(obs, self.camera)

    def state(self, obs: dict) -> np.ndarray:
        """Proprio in the training dataset's units and order, float32 (state_dim,)."""
        opening = self.robot.opening(_field(obs, "agent", "qpos"))
        return self.state_from_pose(eef_pose_in_base(obs), opening)

    def state_from_pose(self, pose: np.ndarray, opening: float) -> np.ndarray:
        raise NotImplementedError

    def gripper_command(self, opening: float) -> float:
        raise NotImplementedError

    def actions(self, chunk: np.ndarray) -> list[np.ndarray]:
        """(H, 7) xyz delta, rpy delta, gripper opening 0..1 -> H actions (7,) xyz, axis-angle, gripper command."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"expected an action chunk (H, {self.action_dim}), got shape {chunk.shape}")
        if not np.all(np.isfinite(chunk)):
            raise ValueError("the action chunk holds NaN or infinite values")
        rotation = rpy_to_axis_angle(chunk[:, 3:6])  # (H, 3)
        return [
            np.concatenate([action[:3], rotvec, [self.gripper_command(action[6])]])
            for action, rotvec in zip(chunk, rotation)
        ]


class BridgeConventions(SimplerConventions):
    """WidowX in SimplerEnv <-> BridgeData V2 (see the module docstring)."""

    robot = WIDOWX
    dataset_name = "bridge_dataset"
    state_dim = 7

    def __init__(self, gripper_threshold: float = GRIPPER_THRESHOLD):
        self.gripper_threshold = float(gripper_threshold)

    def state_from_pose(self, pose: np.ndarray, opening: float) -> np.ndarray:
        rotation = quat_wxyz_to_matrix(pose[3:7]) @ WIDOWX_TOP_DOWN_ROTATION.T
        return np.concatenate([pose[:3], matrix_to_rpy(rotation), [opening]]).astype(np.float32)

    def gripper_command(self, opening: float) -> float:
        return 1.0 if opening > self.gripper_threshold else -1.0


class FractalConventions(SimplerConventions):
    """Google robot in SimplerEnv <-> fractal / RT-1 (see the module docstring)."""

    robot = GOOGLE_ROBOT
    dataset_name = "fractal20220817_data"
    state_dim = 8

    def __init__(self, sticky_steps: int = STICKY_GRIPPER_STEPS):
        self.gripper = RelativeGripper(sticky_steps)

    def reset(self) -> None:
        self.gripper.reset()

    def state_from_pose(self, pose: np.ndarray, opening: float) -> np.ndarray:
        return np.concatenate([pose[:3], wxyz_to_xyzw(pose[3:7]), [1.0 - opening]]).astype(np.float32)

    def gripper_command(self, opening: float) -> float:
        return self.gripper(opening)


CONVENTIONS: dict[str, type[SimplerConventions]] = {"widowx": BridgeConventions, "google_robot": FractalConventions}


def conventions_for_robot(robot: str, *, sticky_gripper_steps: int = STICKY_GRIPPER_STEPS) -> SimplerConventions:
    if robot not in CONVENTIONS:
        raise ValueError(f"unknown SimplerEnv robot {robot!r}; choose from {sorted(CONVENTIONS)}")
    if robot == "google_robot":
        return FractalConventions(sticky_steps=sticky_gripper_steps)
    return CONVENTIONS[robot]()
