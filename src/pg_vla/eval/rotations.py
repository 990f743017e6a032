"""Rotation conventions shared by the evaluation adapters (numpy in, numpy out; scipy does the math).

Conventions, stated once:

    quaternion wxyz   scalar first: what SAPIEN / ManiSkill (SimplerEnv) report, e.g. obs["agent"]["eef_pos"][3:7]
    quaternion xyzw   scalar last: fractal's `base_pose_tool_reached` and scipy's default
    roll/pitch/yaw    static-axes x-y-z Euler angles ("sxyz" in transforms3d, "xyz" lower case in scipy):
                      R = Rz(yaw) @ Ry(pitch) @ Rx(roll); bridge's proprio and both datasets' rotation actions
    axis-angle        a rotation vector: unit axis times the angle in radians, angle in [0, pi]; what the
                      SimplerEnv end-effector controllers take as the rotation part of an action

Every function works on one value (..., last dim as given) or a batch of them.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def _last_dim(x: np.ndarray, size: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (size,):
        raise ValueError(f"{name} must have last dimension {size}, got shape {x.shape}")
    return x


def wxyz_to_xyzw(quat: np.ndarray) -> np.ndarray:
    """(..., 4) scalar-first -> scalar-last."""
    return np.roll(_last_dim(quat, 4, "quaternion"), -1, axis=-1)


def xyzw_to_wxyz(quat: np.ndarray) -> np.ndarray:
    """(..., 4) scalar-last -> scalar-first."""
    return np.roll(_last_dim(quat, 4, "quaternion"), 1, axis=-1)


def _rotation_from_wxyz(quat: np.ndarray) -> Rotation:
    quat = wxyz_to_xyzw(quat)
    if np.any(np.linalg.norm(quat, axis=-1) < 1e-8):
        raise ValueError("quaternion of zero norm")
    return Rotation.from_quat(quat)  # normalizes


def quat_wxyz_to_matrix(quat: np.ndarray) -> np.ndarray:
    """(..., 4) wxyz -> (..., 3, 3) rotation matrix."""
    return _rotation_from_wxyz(quat).as_matrix()


def matrix_to_quat_wxyz(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrix -> (..., 4) wxyz with w >= 0."""
    quat = xyzw_to_wxyz(Rotation.from_matrix(np.asarray(matrix, dtype=np.float64)).as_quat())
    return np.where(quat[..., :1] < 0, -quat, quat)


def matrix_to_rpy(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) roll, pitch, yaw (static x-y-z); pitch in [-pi/2, pi/2], roll and yaw in [-pi, pi]."""
    return Rotation.from_matrix(np.asarray(matrix, dtype=np.float64)).as_euler("xyz")


def rpy_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw -> (..., 3, 3) = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    return Rotation.from_euler("xyz", _last_dim(rpy, 3, "roll/pitch/yaw")).as_matrix()


def rpy_to_axis_angle(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw -> (..., 3) rotation vector of the same rotation (angle in [0, pi])."""
    return Rotation.from_euler("xyz", _last_dim(rpy, 3, "roll/pitch/yaw")).as_rotvec()


def pose_in_frame(frame_pose: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Express a world pose in another pose's frame: both (7,) xyz + wxyz -> (7,) xyz + wxyz (w >= 0).

    position = R_frame^T (p - p_frame), rotation = R_frame^T R.
    """
    frame_pose, pose = _last_dim(frame_pose, 7, "frame pose"), _last_dim(pose, 7, "pose")
    frame_rot = quat_wxyz_to_matrix(frame_pose[3:])
    position = frame_rot.T @ (pose[:3] - frame_pose[:3])
    rotation = frame_rot.T @ quat_wxyz_to_matrix(pose[3:])
    return np.concatenate([position, matrix_to_quat_wxyz(rotation)])
