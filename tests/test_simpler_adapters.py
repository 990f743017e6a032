"""SimplerEnv adapters and env: frame / quaternion / gripper conventions against hand-computed values.

SimplerEnv itself cannot run here (no Vulkan device); observations are plain dicts shaped like its
obs_mode="rgbd" output, and the env tests put a small stand-in `simpler_env` module in sys.modules.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pg_vla.data.normalization import DatasetStatistics, Normalizer
from pg_vla.data.rlds.dataset_configs import get_dataset_config
from pg_vla.eval.adapters.simpler import (
    CLOSE,
    OPEN,
    WIDOWX_TOP_DOWN_ROTATION,
    BridgeSimplerAdapter,
    FractalSimplerAdapter,
    StickyGripper,
    adapter_for_task,
    build_simpler,
)
from pg_vla.eval.envs.base import EvalEnv
from pg_vla.eval.envs.simpler import SIMPLER_TASKS, SimplerEnv, SimplerEnvNotInstalledError, import_simpler_env
from pg_vla.eval.rotations import pose_in_frame, rpy_to_matrix
from pg_vla.policy import Observation

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-9  # float64 rotation math
H = np.sqrt(0.5)
# wxyz quaternions written out by hand
Q_IDENTITY = [1.0, 0.0, 0.0, 0.0]
Q_X90, Q_Y90, Q_Z90 = [H, H, 0.0, 0.0], [H, 0.0, H, 0.0], [H, 0.0, 0.0, H]
Q_Z90_Y90 = [0.5, -0.5, 0.5, 0.5]  # qz90 * qy90: (w1 w2 - v1.v2, w1 v2 + w2 v1 + v1 x v2)
Q_X90_Y90 = [0.5, 0.5, 0.5, 0.5]  # qx90 * qy90
Q_Y120 = [0.5, 0.0, np.sqrt(3) / 2, 0.0]  # 120 deg about y: top-down tilted 30 deg more


def fake_obs(eef_pos, image_shape=(48, 64, 3), camera="3rd_view_camera") -> dict:
    rgb = np.arange(np.prod(image_shape), dtype=np.int64).reshape(image_shape) % 256
    return {"agent": {"eef_pos": np.asarray(eef_pos, dtype=np.float32)},
            "image": {camera: {"rgb": rgb.astype(np.uint8), "depth": np.zeros(image_shape[:2] + (1,), np.float32)}}}


# ---- bridge proprio: rpy of R_eef @ D^T -------------------------------------------------------------
def test_top_down_rotation_is_plus_90_degrees_about_y() -> None:
    np.testing.assert_allclose(WIDOWX_TOP_DOWN_ROTATION, rpy_to_matrix([0.0, np.pi / 2, 0.0]), atol=ATOL)


@pytest.mark.parametrize("quat, rpy", [
    (Q_Y90, [0.0, 0.0, 0.0]),  # the top-down pose itself
    (Q_Z90_Y90, [0.0, 0.0, np.pi / 2]),  # top-down, then 90 deg about the base z axis
    (Q_X90_Y90, [np.pi / 2, 0.0, 0.0]),  # top-down, then 90 deg about x
    (Q_Y120, [0.0, np.pi / 6, 0.0]),  # Ry(120) D^T = Ry(30)
])
def test_bridge_proprio_on_known_poses(quat, rpy) -> None:
    state = BridgeSimplerAdapter().state(None, fake_obs([0.3, -0.1, 0.2, *quat, 0.8]))
    assert state.shape == (7,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:3], [0.3, -0.1, 0.2], atol=1e-7)
    np.testing.assert_allclose(state[3:6], rpy, atol=1e-6)
    assert state[6] == pytest.approx(0.8)  # gripper opening, as bridge's state[6]


@pytest.mark.filterwarnings("ignore:Gimbal lock")  # pitch -90 deg: roll and yaw share one degree of freedom
def test_bridge_proprio_of_identity_pose_is_minus_90_pitch() -> None:
    # the base-aligned gripper (pointing forward) is 90 deg "up" from top-down: R = D^T = Ry(-90)
    state = BridgeSimplerAdapter().state_from_pose(np.array([0, 0, 0, *Q_IDENTITY]), 1.0).astype(np.float64)
    assert state[4] == pytest.approx(-np.pi / 2, abs=1e-6)
    np.testing.assert_allclose(rpy_to_matrix(state[3:6]), WIDOWX_TOP_DOWN_ROTATION.T, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Gimbal lock")
@pytest.mark.parametrize("quat", [Q_X90, Q_Z90])
def test_bridge_proprio_rotation_matches_matrix_rule(quat) -> None:
    rpy = BridgeSimplerAdapter().state_from_pose(np.array([0, 0, 0, *quat]), 0.5)[3:6].astype(np.float64)
    eef = {tuple(Q_X90): [[1, 0, 0], [0, 0, -1], [0, 1, 0]], tuple(Q_Z90): [[0, -1, 0], [1, 0, 0], [0, 0, 1]]}
    expected = np.asarray(eef[tuple(quat)], dtype=np.float64) @ WIDOWX_TOP_DOWN_ROTATION.T
    np.testing.assert_allclose(rpy_to_matrix(rpy), expected, atol=1e-6)


# ---- fractal proprio: wxyz -> xyzw, closedness -------------------------------------------------------
@pytest.mark.parametrize("quat, xyzw", [
    (Q_IDENTITY, [0, 0, 0, 1]), (Q_X90, [H, 0, 0, H]), (Q_Y90, [0, H, 0, H]), (Q_Z90, [0, 0, H, H]),
    (Q_Z90_Y90, [-0.5, 0.5, 0.5, 0.5]),
])
def test_fractal_proprio_reorders_quaternion_and_uses_closedness(quat, xyzw) -> None:
    state = FractalSimplerAdapter().state(None, fake_obs([0.5, -0.1, 0.8, *quat, 0.25], camera="overhead_camera"))
    assert state.shape == (8,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:3], [0.5, -0.1, 0.8], atol=1e-7)
    np.testing.assert_allclose(state[3:7], xyzw, atol=1e-7)
    assert state[7] == pytest.approx(0.75)  # fractal's gripper_closed = 1 - opening


def test_state_dims_match_statistics_and_dataset_configs() -> None:
    for adapter, name in ((BridgeSimplerAdapter(), "bridge"), (FractalSimplerAdapter(), "fractal")):
        stats = DatasetStatistics.load(ROOT / "config" / f"{name}_statistics.json")
        assert adapter.state_dim == stats.proprio.dim == get_dataset_config(adapter.dataset_name).proprio_dim
        assert adapter.action_dim == stats.action.dim == 7


def test_pose_from_tcp_and_base_pose_without_eef_pos() -> None:
    # base at (1, 2, 0) turned 90 deg about z; the tcp 0.5 m ahead of the base (world +y), top-down
    base = np.array([1.0, 2.0, 0.0, *Q_Z90])
    tcp = np.array([1.0, 2.5, 0.3, *Q_Z90_Y90])
    np.testing.assert_allclose(pose_in_frame(base, tcp), [0.5, 0.0, 0.3, *Q_Y90], atol=1e-9)

    agent = types.SimpleNamespace(get_gripper_closedness=lambda: 0.25)
    env = types.SimpleNamespace(unwrapped=types.SimpleNamespace(agent=agent))
    obs = {"agent": {"base_pose": base}, "extra": {"tcp_pose": tcp}}
    state = BridgeSimplerAdapter().state(env, obs)
    np.testing.assert_allclose(state, [0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 0.75], atol=1e-6)
    with pytest.raises(KeyError, match="eef_pos"):
        BridgeSimplerAdapter().state(env, {"agent": {}})


# ---- actions: rpy -> axis-angle, gripper --------------------------------------------------------------
@pytest.mark.parametrize("rpy, rotvec", [
    ([0, 0, 0], [0, 0, 0]),
    ([np.pi / 2, 0, 0], [np.pi / 2, 0, 0]),
    ([0, np.pi / 2, 0], [0, np.pi / 2, 0]),
    ([0, 0, np.pi / 2], [0, 0, np.pi / 2]),
    ([0, 0, -0.1], [0, 0, -0.1]),
    # Rz(90) Rx(90) sends x->y, y->z, z->x: 120 degrees about (1, 1, 1) / sqrt(3)
    ([np.pi / 2, 0, np.pi / 2], [2 * np.pi / 3 / np.sqrt(3)] * 3),
])
def test_rpy_actions_become_axis_angle(rpy, rotvec) -> None:
    for adapter in (BridgeSimplerAdapter(), FractalSimplerAdapter()):
        (action,) = adapter.postprocess(np.array([[0.01, -0.02, 0.03, *rpy, 1.0]]))
        assert action.shape == (7,)
        np.testing.assert_allclose(action[:3], [0.01, -0.02, 0.03], atol=ATOL)
        np.testing.assert_allclose(action[3:6], rotvec, atol=1e-9)


def test_bridge_gripper_is_absolute_open_plus_one() -> None:
    chunk = np.zeros((5, 7))
    chunk[:, 6] = [1.0, 0.51, 0.5, 0.2, -0.3]
    actions = BridgeSimplerAdapter().postprocess(chunk)
    assert [a[6] for a in actions] == [1.0, 1.0, -1.0, -1.0, -1.0]


def test_sticky_gripper_holds_each_change() -> None:
    sticky = StickyGripper(repeat=3)
    openings = [1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1]  # o o c o o o c c c c o
    commands = [sticky(x) for x in openings]
    assert commands == [OPEN, OPEN, CLOSE, CLOSE, CLOSE, OPEN, OPEN, OPEN, CLOSE, CLOSE, CLOSE]


def test_fractal_gripper_default_15_steps_and_reset() -> None:
    adapter = FractalSimplerAdapter()
    chunk = np.zeros((4, 7))
    chunk[:, 6] = [0.9, 0.1, 0.9, 0.9]  # open, close, open, open
    commands = [a[6] for a in adapter.postprocess(chunk)]
    assert commands == [OPEN, CLOSE, CLOSE, CLOSE]
    chunk[:, 6] = 1.0
    for _ in range(4):  # the close issued at step 1 lasts 15 steps: steps 1..15
        commands += [a[6] for a in adapter.postprocess(chunk)]
    assert commands[1:16] == [CLOSE] * 15 and commands[16] == OPEN
    adapter.reset()  # a new episode starts open and free
    assert adapter.postprocess(chunk[:1])[0][6] == OPEN


def test_postprocess_rejects_bad_chunks() -> None:
    with pytest.raises(ValueError, match="action chunk"):
        BridgeSimplerAdapter().postprocess(np.zeros((4, 8)))


# ---- normalization round trip with the published statistics -----------------------------------------
@pytest.mark.parametrize("name, dataset", [("bridge", "bridge_dataset"), ("fractal", "fractal20220817_data")])
def test_normalization_round_trip(name, dataset) -> None:
    stats = DatasetStatistics.load(ROOT / "config" / f"{name}_statistics.json")
    rng = np.random.default_rng(0)
    action_mask = list(get_dataset_config(dataset).action_normalization_mask)
    for arr, mask in ((stats.proprio, None), (stats.action, action_mask)):
        normalizer = Normalizer(arr, "bounds", mask)
        x = arr.p01 + rng.uniform(0, 1, (64, arr.dim)) * (arr.p99 - arr.p01)
        y = normalizer.normalize(x)
        assert np.all(np.abs(y) <= 1.0)
        np.testing.assert_allclose(normalizer.unnormalize(y), x, atol=1e-12)


# ---- preprocess / video frame -------------------------------------------------------------------------
@pytest.mark.parametrize("task, camera, dim", [("widowx_spoon_on_towel", "3rd_view_camera", 7),
                                               ("google_robot_move_near", "overhead_camera", 8)])
def test_preprocess_shapes_and_dtypes(task, camera, dim) -> None:
    adapter = adapter_for_task(task)
    obs = fake_obs([0.3, 0.0, 0.1, *Q_Y90, 1.0], image_shape=(512, 640, 3), camera=camera)
    out = adapter.preprocess(None, obs, "put the spoon on the towel")
    assert isinstance(out, Observation)
    assert list(out.images) == ["primary"]
    assert out.images["primary"].shape == (512, 640, 3) and out.images["primary"].dtype == np.uint8
    np.testing.assert_array_equal(out.images["primary"], obs["image"][camera]["rgb"])
    assert out.state.shape == (dim,) and out.state.dtype == np.float32
    assert out.prompt == "put the spoon on the towel"
    frame = adapter.get_video_frame(None, obs)
    assert frame.dtype == np.uint8 and frame.shape == (512, 640, 3)
    with pytest.raises(KeyError, match="cameras"):
        adapter.image({"image": {"other_camera": {"rgb": frame}}})


def test_float_images_become_uint8() -> None:
    obs = fake_obs([0, 0, 0, *Q_Y90, 1.0])
    obs["image"]["3rd_view_camera"]["rgb"] = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert BridgeSimplerAdapter().image(obs).dtype == np.uint8
    assert BridgeSimplerAdapter().image(obs)[0, 0, 0] == 128


# ---- the env: missing SimplerEnv, and the loop over a stand-in simulator ------------------------------
def test_missing_simpler_env_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "simpler_env", None)  # makes `import simpler_env` fail
    with pytest.raises(SimplerEnvNotInstalledError) as info:
        import_simpler_env()
    message = str(info.value)
    for needle in ("SimplerEnv", "ManiSkill2_real2sim", "pip install -e", "--recurse-submodules"):
        assert needle in message
    with pytest.raises(ImportError, match="ManiSkill2_real2sim"):
        SimplerEnv("widowx_carrot_on_plate")


class StandInSimulator:
    """Shaped like a prepackaged SimplerEnv env: reset(seed, options) / 5-tuple step / info['success']."""

    def __init__(self, task: str, succeed_at: int | None, limit: int):
        self.task, self.succeed_at, self.limit = task, succeed_at, limit
        self.unwrapped = self
        self.resets: list[tuple[int, dict | None]] = []
        self.actions: list[np.ndarray] = []
        self.closed = False

    def _obs(self) -> dict:
        camera = "3rd_view_camera" if self.task.startswith("widowx") else "overhead_camera"
        return fake_obs([0.3, 0.0, 0.1, *Q_Y90, 1.0], camera=camera)

    def reset(self, seed=None, options=None):
        self.resets.append((seed, options))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        self.t += 1
        success = self.succeed_at is not None and self.t >= self.succeed_at
        return self._obs(), float(success), success, self.t >= self.limit, {"success": success, "episode_stats": {}}

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


def test_env_success_done_and_time_limits(monkeypatch) -> None:
    made = stand_in_module(monkeypatch, succeed_at=3)
    env = SimplerEnv("widowx_carrot_on_plate", object_episodes=24)
    assert isinstance(env, EvalEnv) and env.max_steps == 60 and env.fps == 5
    _, instruction = env.reset(seed=25)
    assert instruction == "put carrot on plate"
    assert made[0].resets == [(25, {"obj_init_options": {"episode_id": 1}})]
    results = [env.step(np.zeros(7)) for _ in range(3)]
    assert [(r.success, r.done) for r in results] == [(False, False), (False, False), (True, True)]
    with pytest.raises(ValueError, match="7-D"):
        env.step(np.zeros(6))

    env = SimplerEnv("widowx_carrot_on_plate", end_on_success=False, max_steps=5)
    env.reset(seed=0)
    results = [env.step(np.zeros(7)) for _ in range(5)]
    assert [r.done for r in results] == [False] * 4 + [True]  # ran to max_steps despite the success at 3
    assert results[-1].success and results[-1].info["truncated"] and made[1].resets == [(0, None)]

    made = stand_in_module(monkeypatch, succeed_at=None, limit=2)  # the simulator's own time limit
    env = SimplerEnv("google_robot_pick_coke_can")
    assert env.max_steps == 80
    env.reset(seed=1)
    assert [env.step(np.zeros(7)).done for _ in range(2)] == [False, True]
    env.close()
    assert made[0].closed


def test_task_table() -> None:
    assert {t.max_steps for name, t in SIMPLER_TASKS.items() if name.startswith("widowx")} == {60, 120}
    assert SIMPLER_TASKS["google_robot_open_drawer"].max_steps == 113
    assert SIMPLER_TASKS["google_robot_place_apple_in_closed_top_drawer"].max_steps == 200
    with pytest.raises(ValueError, match="unknown SimplerEnv task"):
        adapter_for_task("widowx_fly")


def _script():
    spec = importlib.util.spec_from_file_location("try_checkpoint_in_simpler",
                                                  ROOT / "scripts" / "try_checkpoint_in_simpler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_episode_with_tiny_policy(monkeypatch, tiny_policy_checkpoint, tmp_path) -> None:
    from pg_vla.policy import Policy

    script = _script()
    made = stand_in_module(monkeypatch, succeed_at=6)
    env, adapter = build_simpler("widowx_carrot_on_plate")
    policy = Policy.from_checkpoint(tiny_policy_checkpoint)
    result = script.run_episode(policy, env, adapter, seed=0, act_steps=4, record=True)
    assert result["success"] and result["steps"] == 6 and result["policy_calls"] == 2
    assert len(result["frames"]) == 7 and len(made[0].actions) == 6
    assert all(a.shape == (7,) and a[6] in (-1.0, 1.0) for a in made[0].actions)
    video = script.write_video(result["frames"], tmp_path / "episode.mp4", fps=5)
    assert video.is_file() and video.stat().st_size > 0


def test_script_reports_missing_simpler_env(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "simpler_env", None)
    code = _script().main(["--task", "widowx_stack_cube", "--checkpoint_path", "/nonexistent"])
    assert code == 2
    assert "ManiSkill2_real2sim" in capsys.readouterr().err


@pytest.mark.parametrize("name, adapter_type", [("bridge", BridgeSimplerAdapter), ("fractal", FractalSimplerAdapter)])
def test_eval_configs_build_suite(monkeypatch, name, adapter_type) -> None:
    from omegaconf import OmegaConf

    from pg_vla.eval.envs.simpler import SimplerSuite

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "config" / "eval" / f"{name}.yaml"))
    options = {k: v for k, v in cfg["env"].items() if k not in ("name", "tasks")}
    suite = SimplerSuite(**options)
    assert isinstance(suite.make_adapter(), adapter_type)
    assert set(cfg["env"]["tasks"]) <= set(suite.tasks)
    assert cfg["dataset_name"] == adapter_type.dataset_name
    stand_in_module(monkeypatch, succeed_at=None)
    env = suite.make_env(cfg["env"]["tasks"][0])
    assert env.max_steps == SIMPLER_TASKS[cfg["env"]["tasks"][0]].max_steps
    with pytest.raises(NotImplementedError):
        suite.make_expert(cfg["env"]["tasks"][0])
