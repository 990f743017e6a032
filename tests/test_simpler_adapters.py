"""SimplerEnv conventions, env wrapper and client loop against hand-computed values (no simulator needed).

Observations are plain dicts shaped exactly like upstream SimplerEnv's obs_mode="rgbd" output
(agent.qpos / base_pose, extra.tcp_pose, image.<camera>.rgb, camera_param); the env tests put a small
stand-in `simpler_env` module in sys.modules, and the client talks to an in-process fake server.
Real episodes: tests/test_simpler_integration.py (marker `simpler`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pg_vla.data.normalization import DatasetStatistics
from pg_vla.data.rlds.dataset_configs import get_dataset_config
from pg_vla.eval.adapters.simpler import BridgeSimplerAdapter, FractalSimplerAdapter, adapter_for_task
from pg_vla.eval.envs.base import EvalEnv
from pg_vla.eval.envs.simpler import SIMPLER_TASKS, SimplerEnv, SimplerEnvNotInstalledError, import_simpler_env
from pg_vla.eval.rotations import rpy_to_matrix
from pg_vla.eval.simpler.client import (
    ClientConfig,
    PolicyConnection,
    ServerMismatchError,
    ServerUnreachableError,
    load_render_env,
    make_request,
    run_evaluation,
)
from pg_vla.eval.simpler.conventions import (
    WIDOWX_TOP_DOWN_ROTATION,
    BridgeConventions,
    FractalConventions,
    RelativeGripper,
)
from pg_vla.policy import Observation

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-9  # float64 rotation math
H = np.sqrt(0.5)
# wxyz quaternions written out by hand
Q_IDENTITY = [1.0, 0.0, 0.0, 0.0]
Q_X90, Q_Y90, Q_Z90 = [H, H, 0.0, 0.0], [H, 0.0, H, 0.0], [H, 0.0, 0.0, H]
Q_Z180 = [0.0, 0.0, 0.0, 1.0]  # the WidowX and Google robot bases in SimplerEnv's scenes
Q_Z90_Y90 = [0.5, -0.5, 0.5, 0.5]  # qz90 * qy90: (w1 w2 - v1.v2, w1 v2 + w2 v1 + v1 x v2)
Q_Z180_Y90 = [0.0, -H, 0.0, H]  # qz180 * qy90
Q_X90_Y90 = [0.5, 0.5, 0.5, 0.5]  # qx90 * qy90
Q_Y120 = [0.5, 0.0, np.sqrt(3) / 2, 0.0]  # 120 deg about y: top-down tilted 30 deg more

# the robots' joint vectors: arm joints arbitrary, fingers where the ManiSkill2_real2sim agents have them
WIDOWX_ARM = [-0.018, 0.04, 0.222, -0.005, 1.365, 0.002]  # then left_finger, right_finger (0.015 .. 0.037 m)
GOOGLE_ARM = [-0.264, 0.083, 0.502, 1.157, 0.029, 1.593, -1.081]  # then 2 fingers (0 open .. 1.3), head pan, tilt


def real_obs(robot: str, tcp_pose, base_pose=(0.0, 0.0, 0.0, *Q_IDENTITY), fingers=None) -> dict:
    """An observation with upstream SimplerEnv's keys, shapes and dtypes."""
    if robot == "widowx":
        camera, shape = "3rd_view_camera", (480, 640, 3)
        qpos = [*WIDOWX_ARM, *(fingers or (0.037, 0.037))]
    else:
        camera, shape = "overhead_camera", (512, 640, 3)
        qpos = [*GOOGLE_ARM, *(fingers or (0.0, 0.0)), -0.003, 0.785]
    rgb = (np.arange(np.prod(shape), dtype=np.int64).reshape(shape) % 251).astype(np.uint8)
    cameras = {"base_camera": (128, 128, 3), camera: shape}
    return {
        "agent": {
            "qpos": np.asarray(qpos, np.float32),
            "qvel": np.zeros(len(qpos), np.float32),
            "controller": {},
            "base_pose": np.asarray(base_pose, np.float32),
        },
        "extra": {"tcp_pose": np.asarray(tcp_pose, np.float32)},
        "camera_param": {
            name: {
                "extrinsic_cv": np.eye(4, dtype=np.float32)[:3],
                "cam2world_gl": np.eye(4, dtype=np.float32),
                "intrinsic_cv": np.eye(3, dtype=np.float32),
            }
            for name in cameras
        },
        "image": {
            name: {"rgb": rgb if name == camera else np.zeros(s, np.uint8), "depth": np.zeros(s[:2] + (1,), np.float32)}
            for name, s in cameras.items()
        },
    }


def quat_matrix(q) -> np.ndarray:
    """wxyz -> 3x3, the textbook formula (independent of pg_vla.eval.rotations)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def homogeneous(pose) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = quat_matrix(pose[3:]), pose[:3]
    return t


# ---- pose: inv(base_pose) * tcp_pose -------------------------------------------------------------------
def test_pose_in_base_frame_hand_checked() -> None:
    # the WidowX base as SimplerEnv places it: (0.147, 0.028, 0.87), turned 180 deg about z; the tcp
    # 0.3 m ahead of it (world -x), 0.1 m to its right (world +y), 0.2 m up, pointing straight down
    base = [0.147, 0.028, 0.87, *Q_Z180]
    tcp = [0.147 - 0.3, 0.028 + 0.1, 0.87 + 0.2, *Q_Z180_Y90]
    state = BridgeConventions().state(real_obs("widowx", tcp, base))
    np.testing.assert_allclose(state[:3], [0.3, -0.1, 0.2], atol=1e-6)  # float32 observations
    np.testing.assert_allclose(state[3:6], [0.0, 0.0, 0.0], atol=1e-6)  # top-down in the base frame
    assert state[6] == pytest.approx(1.0)  # fingers at 0.037 m: open


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pose_in_base_frame_matches_homogeneous_matrices(seed) -> None:
    rng = np.random.default_rng(seed)
    base = np.concatenate([rng.normal(size=3), rng.normal(size=4)])
    tcp = np.concatenate([rng.normal(size=3), rng.normal(size=4)])
    base[3:] /= np.linalg.norm(base[3:])
    tcp[3:] /= np.linalg.norm(tcp[3:])
    expected = np.linalg.inv(homogeneous(base)) @ homogeneous(tcp)
    state = FractalConventions().state(real_obs("google_robot", tcp, base))
    np.testing.assert_allclose(state[:3], expected[:3, 3], atol=2e-6)
    xyzw = state[3:7].astype(np.float64)
    np.testing.assert_allclose(quat_matrix([xyzw[3], *xyzw[:3]]), expected[:3, :3], atol=2e-6)


# ---- gripper opening from qpos ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fingers, opening",
    [
        ((0.037, 0.037), 1.0),
        ((0.015, 0.015), 0.0),
        ((0.026, 0.026), 0.5),
        ((0.015, 0.037), 0.5),
        ((0.0205, 0.0205), 0.25),
        ((0.04, 0.04), 1.0),  # past the open limit: the agent clips closedness at 0
    ],
)
def test_widowx_opening_from_finger_joints(fingers, opening) -> None:
    state = BridgeConventions().state(real_obs("widowx", [0.3, 0, 0.1, *Q_Y90], fingers=fingers))
    assert state[6] == pytest.approx(opening, abs=1e-5)


@pytest.mark.parametrize(
    "fingers, closedness",
    [
        ((0.0, 0.0), 0.0),
        ((1.3, 1.3), 1.0),
        ((0.65, 0.65), 0.5),
        ((0.8586, 0.8586), 0.6605),
        ((-0.0001, 0.0), 0.0),
    ],
)
def test_google_robot_closedness_from_finger_joints(fingers, closedness) -> None:
    # 0.8586 rad on both fingers is what the simulator reports after three close commands (closedness 0.6604)
    state = FractalConventions().state(real_obs("google_robot", [0.5, 0, 0.8, *Q_IDENTITY], fingers=fingers))
    assert state[7] == pytest.approx(closedness, abs=1e-4)


def test_qpos_of_the_wrong_robot_is_refused() -> None:
    obs = real_obs("google_robot", [0.5, 0, 0.8, *Q_IDENTITY])
    with pytest.raises(ValueError, match="widowx: obs\\['agent'\\]\\['qpos'\\] must have 8"):
        BridgeConventions().state(obs)


def test_missing_keys_are_named() -> None:
    obs = real_obs("widowx", [0.3, 0, 0.1, *Q_Y90])
    del obs["extra"]["tcp_pose"]
    with pytest.raises(KeyError, match="tcp_pose"):
        BridgeConventions().state(obs)
    with pytest.raises(KeyError, match="cameras: \\['base_camera'\\]"):
        FractalConventions().image({"image": {"base_camera": {"rgb": np.zeros((4, 4, 3), np.uint8)}}})


# ---- bridge proprio: rpy of R_eef @ D^T ---------------------------------------------------------------
def test_top_down_rotation_is_plus_90_degrees_about_y() -> None:
    np.testing.assert_allclose(WIDOWX_TOP_DOWN_ROTATION, rpy_to_matrix([0.0, np.pi / 2, 0.0]), atol=ATOL)


@pytest.mark.parametrize(
    "quat, rpy",
    [
        (Q_Y90, [0.0, 0.0, 0.0]),  # the top-down pose itself
        (Q_Z90_Y90, [0.0, 0.0, np.pi / 2]),  # top-down, then 90 deg about the base z axis
        (Q_X90_Y90, [np.pi / 2, 0.0, 0.0]),  # top-down, then 90 deg about x
        (Q_Y120, [0.0, np.pi / 6, 0.0]),  # Ry(120) D^T = Ry(30)
    ],
)
def test_bridge_proprio_on_known_poses(quat, rpy) -> None:
    state = BridgeConventions().state(real_obs("widowx", [0.3, -0.1, 0.2, *quat], fingers=(0.0326, 0.0326)))
    assert state.shape == (7,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:3], [0.3, -0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(state[3:6], rpy, atol=1e-6)
    assert state[6] == pytest.approx(0.8, abs=1e-5)  # (0.0326 - 0.015) / 0.022


@pytest.mark.parametrize(
    "quat, xyzw",
    [
        (Q_IDENTITY, [0, 0, 0, 1]),
        (Q_X90, [H, 0, 0, H]),
        (Q_Y90, [0, H, 0, H]),
        (Q_Z90, [0, 0, H, H]),
        (Q_Z90_Y90, [-0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_fractal_proprio_reorders_quaternion(quat, xyzw) -> None:
    state = FractalConventions().state(real_obs("google_robot", [0.5, -0.1, 0.8, *quat]))
    assert state.shape == (8,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:3], [0.5, -0.1, 0.8], atol=1e-6)
    np.testing.assert_allclose(state[3:7], xyzw, atol=1e-6)


def test_state_dims_match_statistics_and_dataset_configs() -> None:
    for conventions, name in ((BridgeConventions(), "bridge"), (FractalConventions(), "fractal")):
        stats = DatasetStatistics.load(ROOT / "config" / f"{name}_statistics.json")
        assert conventions.state_dim == stats.proprio.dim == get_dataset_config(conventions.dataset_name).proprio_dim
        assert conventions.action_dim == stats.action.dim == 7


# ---- actions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rpy, rotvec",
    [
        ([0, 0, 0], [0, 0, 0]),
        ([np.pi / 2, 0, 0], [np.pi / 2, 0, 0]),
        ([0, 0, -0.1], [0, 0, -0.1]),
        # Rz(90) Rx(90) sends x->y, y->z, z->x: 120 degrees about (1, 1, 1) / sqrt(3)
        ([np.pi / 2, 0, np.pi / 2], [2 * np.pi / 3 / np.sqrt(3)] * 3),
    ],
)
def test_rpy_actions_become_axis_angle(rpy, rotvec) -> None:
    for conventions in (BridgeConventions(), FractalConventions()):
        (action,) = conventions.actions(np.array([[0.01, -0.02, 0.03, *rpy, 1.0]]))
        assert action.shape == (7,)
        np.testing.assert_allclose(action[:3], [0.01, -0.02, 0.03], atol=ATOL)
        np.testing.assert_allclose(action[3:6], rotvec, atol=1e-9)


def test_bridge_gripper_is_absolute_open_plus_one() -> None:
    chunk = np.zeros((5, 7))
    chunk[:, 6] = [1.0, 0.51, 0.5, 0.2, -0.3]
    assert [a[6] for a in BridgeConventions().actions(chunk)] == [1.0, 1.0, -1.0, -1.0, -1.0]


def test_relative_gripper_holds_strong_commands() -> None:
    gripper = RelativeGripper(repeat=3)
    openings = [0.4, 1.0, 0.9, 0.1, 0.8, 0.0, 0.5, 0.5, 0.5, 0.6]
    # c = 1 - 2 * opening: 0.2 (sent as is), -1 held steps 1-3, -0.6 held steps 4-6 (the close predicted at
    # step 5 is lost), then weak commands are sent as they come: 0, 0, -0.2
    expected = [0.2, -1.0, -1.0, -1.0, -0.6, -0.6, -0.6, 0.0, 0.0, -0.2]
    np.testing.assert_allclose([gripper(x) for x in openings], expected, atol=1e-12)
    np.testing.assert_allclose([gripper(x) for x in (0.5, 0.6, 0.3)], [0.0, -0.2, 0.4], atol=1e-12)


def test_fractal_gripper_holds_15_steps_and_resets() -> None:
    conventions = FractalConventions()
    chunk = np.zeros((4, 7))
    chunk[:, 6] = [0.5, 0.0, 1.0, 1.0]  # neutral, close, open, open
    commands = [a[6] for a in conventions.actions(chunk)]
    chunk[:, 6] = 1.0
    for _ in range(4):
        commands += [a[6] for a in conventions.actions(chunk)]
    assert commands[0] == 0.0 and commands[1:16] == [1.0] * 15 and commands[16] == -1.0  # close held steps 1-15
    conventions.reset()  # a new episode: no hold
    chunk[0, 6] = 0.5
    assert conventions.actions(chunk[:1])[0][6] == 0.0


def test_bad_chunks_are_refused() -> None:
    with pytest.raises(ValueError, match="action chunk"):
        BridgeConventions().actions(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="NaN"):
        BridgeConventions().actions(np.full((4, 7), np.nan))


# ---- the torch adapters ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task, robot, camera, shape, dim",
    [
        ("widowx_spoon_on_towel", "widowx", "3rd_view_camera", (480, 640, 3), 7),
        ("google_robot_move_near_v0", "google_robot", "overhead_camera", (512, 640, 3), 8),
    ],
)
def test_preprocess_shapes_and_dtypes(task, robot, camera, shape, dim) -> None:
    adapter = adapter_for_task(task)
    obs = real_obs(robot, [0.3, 0.0, 0.1, *Q_Y90])
    out = adapter.preprocess(None, obs, "put the spoon on the towel")
    assert isinstance(out, Observation) and list(out.images) == ["primary"]
    assert out.images["primary"].shape == shape and out.images["primary"].dtype == np.uint8
    np.testing.assert_array_equal(out.images["primary"], obs["image"][camera]["rgb"])
    assert out.state.shape == (dim,) and out.state.dtype == np.float32
    assert out.prompt == "put the spoon on the towel"
    np.testing.assert_array_equal(adapter.get_video_frame(None, obs), obs["image"][camera]["rgb"])
    assert isinstance(adapter, BridgeSimplerAdapter if robot == "widowx" else FractalSimplerAdapter)


def test_conventions_import_neither_torch_nor_tensorflow() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None; "
        "import pg_vla.eval.simpler.client, pg_vla.eval.simpler.conventions, pg_vla.eval.envs.simpler"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---- the task table ----------------------------------------------------------------------------------------
UPSTREAM_ENVIRONMENTS = [  # simpler_env.ENVIRONMENTS at SimplerEnv 4ab7178
    "google_robot_pick_coke_can",
    "google_robot_pick_horizontal_coke_can",
    "google_robot_pick_vertical_coke_can",
    "google_robot_pick_standing_coke_can",
    "google_robot_pick_object",
    "google_robot_move_near_v0",
    "google_robot_move_near_v1",
    "google_robot_move_near",
    "google_robot_open_drawer",
    "google_robot_open_top_drawer",
    "google_robot_open_middle_drawer",
    "google_robot_open_bottom_drawer",
    "google_robot_close_drawer",
    "google_robot_close_top_drawer",
    "google_robot_close_middle_drawer",
    "google_robot_close_bottom_drawer",
    "google_robot_place_in_closed_drawer",
    "google_robot_place_in_closed_top_drawer",
    "google_robot_place_in_closed_middle_drawer",
    "google_robot_place_in_closed_bottom_drawer",
    "google_robot_place_apple_in_closed_top_drawer",
    "widowx_spoon_on_towel",
    "widowx_carrot_on_plate",
    "widowx_stack_cube",
    "widowx_put_eggplant_in_basket",
]


def test_task_table_covers_upstream() -> None:
    assert sorted(SIMPLER_TASKS) == sorted(UPSTREAM_ENVIRONMENTS)
    layouts = {name: t.episode_configs for name, t in SIMPLER_TASKS.items() if t.episode_configs}
    assert layouts == {
        "widowx_spoon_on_towel": 24,
        "widowx_carrot_on_plate": 24,
        "widowx_stack_cube": 24,
        "widowx_put_eggplant_in_basket": 24,
        "google_robot_move_near": 60,
        "google_robot_move_near_v0": 60,
        "google_robot_move_near_v1": 60,
    }
    assert {t.max_steps for name, t in SIMPLER_TASKS.items() if name.startswith("widowx")} == {60, 120}
    assert SIMPLER_TASKS["google_robot_pick_object"].max_steps == 80
    assert SIMPLER_TASKS["google_robot_open_drawer"].max_steps == 113
    with pytest.raises(ValueError, match="unknown SimplerEnv task 'widowx_fly'"):
        adapter_for_task("widowx_fly")


# ---- the env over a stand-in simulator ---------------------------------------------------------------------
def test_missing_simpler_env_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "simpler_env", None)  # makes `import simpler_env` fail
    with pytest.raises(SimplerEnvNotInstalledError) as info:
        import_simpler_env()
    for needle in ("SimplerEnv", "scripts/setup_simpler.sh", "--recurse-submodules", "simpler_client.py"):
        assert needle in str(info.value)


class StandInSimulator:
    """Shaped like a prepackaged SimplerEnv env: reset(seed, options) / 5-tuple step / info['success']."""

    def __init__(self, task: str, succeed_at: int | None, limit: int):
        self.task, self.succeed_at, self.limit = task, succeed_at, limit
        self.unwrapped = self
        self.resets: list[tuple[int, dict | None]] = []
        self.actions: list[np.ndarray] = []
        self.closed = False

    def _obs(self) -> dict:
        robot = "widowx" if self.task.startswith("widowx") else "google_robot"
        return real_obs(robot, [0.3, 0.0, 0.1, *Q_Y90])

    def reset(self, seed=None, options=None):
        self.resets.append((seed, options))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        self.t += 1
        success = self.succeed_at is not None and self.t >= self.succeed_at
        return self._obs(), float(success), success, self.t >= self.limit, {"success": success}

    def get_language_instruction(self) -> str:
        return "put carrot on plate"

    def close(self) -> None:
        self.closed = True


def stand_in_module(monkeypatch, succeed_at: int | None, limit: int = 1000) -> list[StandInSimulator]:
    made: list[StandInSimulator] = []

    def make(task):
        made.append(StandInSimulator(task, succeed_at, limit))
        return made[-1]

    monkeypatch.setitem(sys.modules, "simpler_env", types.SimpleNamespace(make=make))
    return made


@pytest.mark.parametrize(
    "task, seed, episode_id",
    [
        ("widowx_carrot_on_plate", 25, 1),
        ("widowx_put_eggplant_in_basket", 3, 3),
        ("google_robot_move_near_v0", 61, 1),
        ("google_robot_pick_coke_can", 5, None),
        ("google_robot_open_drawer", 5, None),
    ],
)
def test_episode_id_only_for_envs_that_read_it(monkeypatch, task, seed, episode_id) -> None:
    made = stand_in_module(monkeypatch, succeed_at=None)
    SimplerEnv(task).reset(seed=seed)
    expected = None if episode_id is None else {"obj_init_options": {"episode_id": episode_id}}
    assert made[0].resets == [(seed, expected)]


def test_env_runs_to_the_time_limit_by_default(monkeypatch) -> None:
    made = stand_in_module(monkeypatch, succeed_at=3)
    env = SimplerEnv("widowx_carrot_on_plate", max_steps=5)
    assert isinstance(env, EvalEnv) and env.fps == 5
    env.reset(seed=0)
    results = [env.step(np.zeros(7)) for _ in range(5)]
    assert [r.done for r in results] == [False] * 4 + [True]  # ran to max_steps despite the success at 3
    assert results[-1].success and results[-1].info["truncated"]
    env = SimplerEnv("widowx_carrot_on_plate", end_on_success=True)
    env.reset(seed=0)
    assert [env.step(np.zeros(7)).done for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="7-D"):
        env.step(np.zeros(6))
    made = stand_in_module(monkeypatch, succeed_at=None, limit=2)  # the simulator's own time limit
    env = SimplerEnv("google_robot_pick_coke_can")
    assert env.max_steps == 80
    env.reset(seed=1)
    assert [env.step(np.zeros(7)).done for _ in range(2)] == [False, True]
    env.close()
    assert made[0].closed


# ---- the client loop with a fake server --------------------------------------------------------------------
class FakeServer:
    """openpi_client-shaped: get_server_metadata() and infer(request) -> {"actions": (4, 7)}."""

    def __init__(self, state_dim: int, opening: float = 1.0):
        self.requests: list[dict] = []
        self.opening = opening
        self.meta = {
            "state_dim": state_dim,
            "action_dim": 7,
            "dataset_name": None,
            "observation_spec": {"observation/image": {}, "observation/state": {}, "prompt": {}},
        }

    def get_server_metadata(self) -> dict:
        return self.meta

    def infer(self, request: dict) -> dict:
        self.requests.append(request)
        chunk = np.zeros((4, 7))
        chunk[:, 0] = np.arange(4) * 0.01  # x deltas 0, 0.01, 0.02, 0.03
        chunk[:, 6] = self.opening
        return {"actions": chunk}


def test_request_holds_image_state_prompt_and_seed() -> None:
    obs = real_obs("widowx", [0.3, 0, 0.1, *Q_Y90])
    request = make_request(BridgeConventions(), obs, "put carrot on plate", seed=7)
    assert sorted(request) == ["observation/image", "observation/state", "prompt", "seed"]
    assert request["observation/image"].shape == (480, 640, 3) and request["observation/image"].dtype == np.uint8
    assert request["observation/state"].shape == (7,) and request["observation/state"].dtype == np.float32
    assert request["prompt"] == "put carrot on plate" and request["seed"] == 7


def test_client_writes_metaworld_style_outputs(monkeypatch, tmp_path) -> None:
    made = stand_in_module(monkeypatch, succeed_at=5)
    fake = FakeServer(state_dim=7)
    cfg = ClientConfig.from_dict(
        {
            "log_dir": str(tmp_path),
            "env": {"robot": "widowx", "tasks": ["widowx_stack_cube"], "max_steps": 6},
            "n_eval_episode": 2,
            "eval_seed_start": 10,
            "act_steps": 3,
            "n_video": 1,
        }
    )
    summary = run_evaluation(cfg, PolicyConnection(fake, "ws://fake"))
    assert [m.resets[0] for m in made] == [(10, {"obj_init_options": {"episode_id": 10}})]
    assert made[0].resets[1] == (11, {"obj_init_options": {"episode_id": 11}})
    assert len(fake.requests) == 4  # 6 steps / 3 actions per chunk, two episodes
    xs = [a[0] for a in made[0].actions[:6]]
    np.testing.assert_allclose(xs, [0.0, 0.01, 0.02, 0.0, 0.01, 0.02])  # the first act_steps of each chunk
    assert all(a[6] == 1.0 for a in made[0].actions)
    lines = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert lines == [
        {
            "task": "widowx_stack_cube",
            "seed": s,
            "success": True,
            "steps": 6,
            "instruction": "put carrot on plate",
            "final": {},
        }
        for s in (10, 11)
    ]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["per_task"] == {"widowx_stack_cube": 1.0} and written["mean"] == 1.0 == summary["mean"]
    assert written["timing"]["control_steps"] == 12 and written["timing"]["requests"] == 4
    assert [p.name for p in (tmp_path / "videos").iterdir()][0].startswith("widowx_stack_cube_seed10_success")


class DrawerStandIn(StandInSimulator):
    """Like ManiSkill2_real2sim's drawer envs: obs["extra"] is empty, the tcp link's pose is on the env."""

    TCP = [0.3, 0.0, 0.1, *Q_Y90]

    def __init__(self, task: str, succeed_at: int | None, limit: int):
        super().__init__(task, succeed_at, limit)
        self.tcp = types.SimpleNamespace(pose=types.SimpleNamespace(p=np.array(self.TCP[:3]), q=np.array(self.TCP[3:])))

    def _obs(self) -> dict:
        obs = real_obs("google_robot", self.TCP)
        obs["extra"] = {}
        return obs


def test_client_reads_the_tcp_pose_of_drawer_envs_from_the_simulator(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(
        sys.modules, "simpler_env", types.SimpleNamespace(make=lambda task: DrawerStandIn(task, None, 1000))
    )
    fake = FakeServer(state_dim=8)
    cfg = ClientConfig.from_dict(
        {
            "log_dir": str(tmp_path),
            "env": {"robot": "google_robot", "tasks": ["google_robot_open_drawer"], "max_steps": 3},
            "n_eval_episode": 1,
            "act_steps": 2,
            "n_video": 0,
        }
    )
    run_evaluation(cfg, PolicyConnection(fake, "ws://fake"))
    expected = FractalConventions().state(real_obs("google_robot", DrawerStandIn.TCP))  # the same pose in extra
    assert len(fake.requests) == 2
    for request in fake.requests:
        np.testing.assert_allclose(request["observation/state"], expected, atol=1e-6)


def test_client_refuses_a_policy_of_the_other_robot() -> None:
    with pytest.raises(ServerMismatchError, match="reads 7 state values, the google_robot sends 8"):
        PolicyConnection(FakeServer(state_dim=7), "ws://fake").check(FractalConventions())


def test_client_names_an_unreachable_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServerUnreachableError, match=f"no policy server at ws://127.0.0.1:{port}"):
        PolicyConnection.connect("127.0.0.1", port)


def test_client_config_rejects_unknown_and_foreign_tasks(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown SimplerEnv task 'widowx_fly'"):
        ClientConfig.from_dict({"log_dir": str(tmp_path), "env": {"robot": "widowx", "tasks": ["widowx_fly"]}})
    with pytest.raises(ValueError, match="is a google_robot task; env.robot is 'widowx'"):
        ClientConfig.from_dict(
            {"log_dir": str(tmp_path), "env": {"robot": "widowx", "tasks": ["google_robot_pick_coke_can"]}}
        )


def test_render_env_file_sets_only_unset_variables(monkeypatch, tmp_path) -> None:
    (tmp_path / "pg_vla_simpler.env").write_text("# comment\nPG_VLA_TEST_A=1\nPG_VLA_TEST_B=lvp.json\n")
    monkeypatch.setenv("PG_VLA_TEST_A", "kept")
    monkeypatch.delenv("PG_VLA_TEST_B", raising=False)
    assert load_render_env(tmp_path) == {"PG_VLA_TEST_B": "lvp.json"}
    import os

    assert os.environ["PG_VLA_TEST_A"] == "kept"
    monkeypatch.delenv("PG_VLA_TEST_B")


@pytest.mark.parametrize(
    "name, robot, adapter_type",
    [("bridge", "widowx", BridgeSimplerAdapter), ("fractal", "google_robot", FractalSimplerAdapter)],
)
def test_eval_configs_drive_suite_and_client(monkeypatch, name, robot, adapter_type) -> None:
    from omegaconf import OmegaConf

    from pg_vla.eval.envs.simpler import SimplerSuite

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "config" / "eval" / f"{name}.yaml"), resolve=True)
    client_cfg = ClientConfig.from_dict(cfg)
    assert client_cfg.robot == robot and client_cfg.tasks == cfg["env"]["tasks"]
    assert cfg["env"]["end_on_success"] is False  # the visual-matching protocol
    suite = SimplerSuite(**{k: v for k, v in cfg["env"].items() if k not in ("name", "tasks")})
    adapter = suite.make_adapter()
    assert isinstance(adapter, adapter_type) and cfg["dataset_name"] == adapter.dataset_name
    stand_in_module(monkeypatch, succeed_at=None)
    env = suite.make_env(cfg["env"]["tasks"][0])
    assert env.max_steps == SIMPLER_TASKS[cfg["env"]["tasks"][0]].max_steps and not env.end_on_success
